"""Models: LeMeViT, LVT and VVT, registered with timm on import."""
from lemevit.models import lemevit, lvt, vvt  # noqa: F401  (registers the models with timm)
from lemevit.models.factory import (
    create_dense_encoder,
    create_model,
    input_size_kwargs,
    list_models,
    load_checkpoint_file,
    load_weights,
)
from lemevit.models.lemevit import LeMeViT
from lemevit.models.lvt import LVT
from lemevit.models.vvt import VVT

__all__ = ["LVT", "VVT", "LeMeViT", "create_dense_encoder", "create_model", "input_size_kwargs", "list_models",
           "load_checkpoint_file", "load_weights"]
