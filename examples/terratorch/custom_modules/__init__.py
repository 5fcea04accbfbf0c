"""TerraTorch imports this folder before it builds the model (`custom_modules_path` in the config): importing
lemevit registers its backbones with timm, where TerraTorch's backbone registry looks them up by name."""
import lemevit  # noqa: F401
