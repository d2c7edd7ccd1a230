"""The prediction pipeline, without torch: numpy pre/post-processing around any backend's network.

Everything here imports only numpy, pillow, the chosen runtime (onnxruntime or OpenVINO; the torch
backend lives in :mod:`harnet.engine.torch_runtime`) and harnet's torch-free parts (``harnet.config``,
``harnet.utils``), so a device installs ``pip install --no-deps harnet`` beside them. Optional pieces load
on use: rasterio for GeoTIFF windows, geopandas/pyogrio for map outputs, PyAV for video.
"""

from harnet.deploy.metadata import load_export_info
from harnet.deploy.predictor import Predictor, load_image, postprocess_raw
from harnet.deploy.preprocess import Batch, preprocess
from harnet.deploy.runtime import open_runtime

# The name of harnet <= 0.1's torch-free detector: the pipeline of an exported model.
DeployedDetector = Predictor.from_export

__all__ = ["Batch", "DeployedDetector", "Predictor", "load_export_info", "load_image", "open_runtime",
           "postprocess_raw", "preprocess"]
