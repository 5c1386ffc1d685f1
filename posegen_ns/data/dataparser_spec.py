"""Entry point ``nerfstudio.dataparser_configs`` -> ``posegen-capture``.

Kept apart from the datamanager and pipeline modules: nerfstudio imports dataparser entry points
while building its own config tables, and importing a datamanager here would be circular.
"""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from posegen_ns.data.dataparser import PoseGenCaptureDataParserConfig

posegen_capture_dataparser = DataParserSpecification(
    config=PoseGenCaptureDataParserConfig(),
    description="posegen capture: images, masks, OpenCV cameras and per-frame SMPL parameters (native or ZJU-MoCap)",
)
