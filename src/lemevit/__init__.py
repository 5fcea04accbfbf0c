"""lemevit: efficient vision transformers for remote-sensing image interpretation.

``import lemevit`` registers the models with timm, so ``timm.create_model("lemevit_tiny")`` works.
"""
from lemevit.models import LeMeViT, create_model, list_models, load_weights

__version__ = "0.1.0"

__all__ = ["LeMeViT", "__version__", "create_model", "list_models", "load_weights"]
