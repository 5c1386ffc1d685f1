"""The install: torchvision imports under CPU torch in a fresh interpreter, and the plugin registers."""

import subprocess
import sys


def test_torchvision_imports_in_a_fresh_interpreter():
    code = "import torchvision, torchvision.models as m; import torch; print(m.resnet18().eval()(torch.zeros(1, 3, 64, 64)).shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([1, 1000])" in out.stdout


def test_nerfstudio_discovers_the_method_and_dataparser():
    code = (
        "from nerfstudio.plugins.registry import discover_methods\n"
        "from nerfstudio.plugins.registry_dataparser import discover_dataparsers\n"
        "m, _ = discover_methods(); d, _ = discover_dataparsers()\n"
        "print('posegen-human' in m, 'posegen-human-tiny' in m, 'posegen-capture' in d)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["True", "True", "True"]
