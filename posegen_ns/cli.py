"""What the console scripts share: their entry point, messages and progress bars, loading a trained run,
and the JSON form of their settings.

Messages and bars use nerfstudio's console (:data:`nerfstudio.utils.rich_utils.CONSOLE`) and progress bar
(:func:`nerfstudio.utils.rich_utils.get_progress`), as ``ns-train`` does. A trained run is loaded with
nerfstudio's ``eval_setup`` (:func:`load_run`), as ``ns-export`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TypeVar

from nerfstudio.utils.rich_utils import CONSOLE, get_progress

from posegen_ns.atomic_io import IO_ERRNOS_DENIED, IO_ERRNOS_FULL
from posegen_ns.errors import PoseGenInputError

T = TypeVar("T")


def run_console_script(prog: str, config_type: Any, main: Callable[[T], Any], **tyro_options: Any) -> None:
    """The body of a console script's ``entrypoint()``: ``main(tyro.cli(config_type, prog=prog, **tyro_options))``;
    a :class:`~posegen_ns.errors.PoseGenInputError` (bad input: a missing file, a wrong option) ends the
    program with ``prog: message`` and exit status 1 instead of a traceback, as does an ``OSError`` of a full disk
    or a read-only / forbidden folder (with what to fix).

    ``config_type`` is a dataclass, or a union of ``tyro.conf.subcommand``-annotated dataclasses (then
    ``main`` receives the chosen one; ``tyro_options`` can name the ``default`` subcommand's instance).
    """
    import tyro

    cfg = tyro.cli(config_type, prog=prog, **tyro_options)
    try:
        main(cfg)
    except PoseGenInputError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    except OSError as exc:  # a full disk or a read-only / forbidden folder: the user's to fix, not a bug
        if exc.errno not in IO_ERRNOS_FULL | IO_ERRNOS_DENIED:
            raise
        fix = "free space on that disk" if exc.errno in IO_ERRNOS_FULL else "make it writable or choose another path"
        raise SystemExit(f"{prog}: cannot write {exc.filename or 'a file'} ({exc.strerror}); {fix}, then run again.") from None


def say_for(prog: str, quiet: bool = False) -> Callable[[str], None]:
    """``say(msg)``: print ``msg`` after the program's name in bold on nerfstudio's console (nothing when ``quiet``)."""
    if quiet:
        return lambda msg: None
    return lambda msg: CONSOLE.print(f"[bold]{prog}[/bold] {msg}")


@contextmanager
def progress(description: str, total: int, quiet: bool = False, completed: int = 0,
             suffix: Optional[str] = None) -> Iterator[Callable[..., None]]:
    """A progress bar of ``total`` steps (nerfstudio's ``get_progress``) for a ``with`` block.

    Yields ``advance(n=1, info=None)``: ``n`` more steps done; ``info`` (kept until the next one) is shown
    after the description (e.g. the latest losses). Nothing is shown when ``quiet``. ``completed`` steps are done
    already (a resumed job); ``suffix`` names the rate's unit (e.g. ``"img/s"``).
    """
    if quiet:
        yield lambda n=1, info=None: None
        return
    with get_progress("[progress.description]{task.description}", suffix=suffix) as bar:
        task = bar.add_task(description, total=total, completed=completed)

        def advance(n: int = 1, info: Optional[str] = None) -> None:
            if info is None:
                bar.update(task, advance=n)
            else:
                bar.update(task, advance=n, description=f"{description}  {info}")

        yield advance


def jsonable(x: Any) -> Any:
    """``x`` with dataclasses and dicts as dicts, tuples and lists as lists, numbers, strings, booleans and
    ``None`` kept, anything else (paths, types) as its ``str``: a config as it goes into a results JSON."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x if isinstance(x, (int, float, str, bool, type(None))) else str(x)


def load_run(config: Path | str, flag: str = "--load-config", update_config: Any = None) -> Any:
    """The pipeline of a trained ``ns-train posegen-human`` run, from its ``RUN/config.yml`` (nerfstudio's
    ``eval_setup`` in inference mode: the latest checkpoint, on the run's device). ``update_config(TrainerConfig)
    -> TrainerConfig``, if given, changes the loaded configuration before the pipeline is built.

    Raises:
        PoseGenInputError: ``config`` is not a file (the message names ``flag``).
    """
    path = Path(config).expanduser()
    if not path.is_file():
        raise PoseGenInputError(f"{flag} {config} does not exist; pass RUN/config.yml of an ns-train posegen-human run.")
    from nerfstudio.utils.eval_utils import eval_setup  # imported here: it loads all of nerfstudio

    _, pipeline, _, _ = eval_setup(path, test_mode="inference", update_config_callback=update_config)
    return pipeline
