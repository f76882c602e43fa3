"""model-interface: one Python interface for every vision-language model.

Importing this package is cheap: backends (torch, transformers, vLLM, SGLang) are imported
only when a model that needs them is created.
"""

from model_interface.images import ImageInput, ImageLoadError, load_image
from model_interface.model_factory import ModelCreationError, ModelFactory, ModelFactoryError
from model_interface.model_interface import (
    GenerationSettings,
    ModelInterface,
    ModelUnavailable,
    Prediction,
    PredictionRequest,
    UnsupportedRequest,
)
from model_interface.model_utils import Measurement, measure, measure_inference_time

__version__ = "0.2.0"

__all__ = [
    "GenerationSettings",
    "ImageInput",
    "ImageLoadError",
    "Measurement",
    "ModelCreationError",
    "ModelFactory",
    "ModelFactoryError",
    "ModelInterface",
    "ModelUnavailable",
    "Prediction",
    "PredictionRequest",
    "UnsupportedRequest",
    "__version__",
    "load_image",
    "measure",
    "measure_inference_time",
]
