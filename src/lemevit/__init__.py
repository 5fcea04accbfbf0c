"""lemevit: efficient vision transformers for remote-sensing image interpretation.

``import lemevit`` registers the models with timm, so ``timm.create_model("lemevit_tiny")`` works.
"""
from lemevit.cpu import prefer_sleeping_openmp_threads

# Before torch is loaded, which happens in the next import: OpenMP reads its wait policy then (see lemevit.cpu).
prefer_sleeping_openmp_threads()

from lemevit.models import LeMeViT, create_model, list_models, load_weights  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LeMeViT", "__version__", "create_model", "list_models", "load_weights"]
