"""Models: LeMeViT (and the other seed architectures), registered with timm on import."""
from lemevit.models import lemevit  # noqa: F401  (registers lemevit_tiny/small/base)
from lemevit.models.factory import create_model, list_models, load_checkpoint_file, load_weights
from lemevit.models.lemevit import LeMeViT

__all__ = ["LeMeViT", "create_model", "list_models", "load_checkpoint_file", "load_weights"]
