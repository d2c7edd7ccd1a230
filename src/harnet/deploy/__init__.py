"""Running an exported HAR-Net without torch: numpy pre/post-processing around onnxruntime or OpenVINO.

Everything here imports only numpy, pillow, the chosen runtime and harnet's torch-free parts
(``harnet.config``, ``harnet.utils.image_decode``), so a device installs
``pip install --no-deps harnet`` beside them. The numpy code is the PyTorch path step for step
(tests compare the two on random inputs and on an exported model).
"""

from harnet.deploy.detector import DeployedDetector, load_image, postprocess_raw, predict_files
from harnet.deploy.metadata import load_export_info
from harnet.deploy.preprocess import Batch, preprocess
from harnet.deploy.runtime import open_runtime

__all__ = ["Batch", "DeployedDetector", "load_export_info", "load_image", "open_runtime", "postprocess_raw",
           "predict_files", "preprocess"]
