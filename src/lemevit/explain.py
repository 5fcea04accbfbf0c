"""What the meta tokens look at: LeMeViT's meta-token attention maps (the paper's Figure 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lemevit.errors import ConfigError
from lemevit.io import atomic_path
from lemevit.layers.meta_attention import DualCrossAttention, MetaCrossAttention
from lemevit.models.lemevit import LeMeViT
from lemevit.viz import display_rgb

__all__ = ["explain_checkpoint", "meta_attention", "meta_attention_blocks", "save_meta_attention_png"]


def _backbone(model: nn.Module) -> LeMeViT:
    inner = model.model if isinstance(model, nn.ModuleDict) and "model" in model else model
    if not isinstance(inner, LeMeViT):
        raise TypeError(f"meta-token attention needs a LeMeViT model, got {type(inner).__name__}")
    return inner


def meta_attention_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks in which the meta tokens attend to the image tokens (C and D blocks)."""
    return [name for name, m in _backbone(model).named_modules()
            if isinstance(getattr(m, "attn", None), (MetaCrossAttention, DualCrossAttention))]


@torch.no_grad()
def meta_attention(model: nn.Module, images: torch.Tensor, block: str | None = None) -> torch.Tensor:
    """Attention of each meta token over the image tokens of one block, averaged over heads.

    Args:
        model: a LeMeViT model (classifier or ``features_only``).
        images: ``(B, C, H, W)`` normalised input.
        block: a name from :func:`meta_attention_blocks`; default the deepest one.

    Returns:
        ``(B, M, h, w)`` maps on the block's token grid; each map sums to one.
    """
    names = meta_attention_blocks(model)
    block = block or names[-1]
    if block not in names:
        raise ConfigError("block", f"{block!r} has no meta-to-image attention; choose one of {names}")
    module = _backbone(model).get_submodule(block)
    grid: list[tuple[int, int]] = []
    hook = module.register_forward_pre_hook(lambda _m, args: grid.append(tuple(args[0].shape[1:3])))
    was_training = model.training
    module.attn.capture_attention = True
    try:
        model.eval()
        model(images)
    finally:
        module.attn.capture_attention = False
        hook.remove()
        model.train(was_training)
    probs = module.attn.meta_to_image  # (B, heads, M, N)
    del module.attn.meta_to_image
    h, w = grid[0]
    return probs.mean(dim=1).unflatten(-1, (h, w))


def _displayable(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] from an image array or a (C, H, W) tensor of any band count (the first
    three bands, each stretched between its 2nd and 98th percentile)."""
    if isinstance(image, torch.Tensor):
        image = np.moveaxis(image.detach().float().cpu().numpy(), 0, -1)
    return display_rgb(np.asarray(image, dtype=np.float32))


def save_meta_attention_png(image: torch.Tensor | np.ndarray, maps: torch.Tensor, path: str | Path,
                            tokens: list[int] | None = None, cols: int = 4, title: str | None = None) -> Path:
    """Write one heat map per meta token over the image, as a PNG grid (written atomically).

    Args:
        image: the input, as a (C, H, W) tensor or an (H, W, 3) array.
        maps: ``(M, h, w)`` attention maps of that image (from :func:`meta_attention`).
        tokens: which meta tokens to draw (default all).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picture = _displayable(image)
    tokens = list(range(maps.shape[0])) if tokens is None else tokens
    size = picture.shape[:2]
    heat = F.interpolate(maps[tokens].unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)
    heat = heat.squeeze(1).cpu().numpy()
    cols = min(cols, len(tokens) + 1)
    rows = -(-(len(tokens) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("input", fontsize=9)
    for ax, token, h in zip(axes.flat[1:], tokens, heat, strict=False):
        ax.imshow(picture)
        ax.imshow(h, cmap="jet", alpha=0.5)
        ax.set_title(f"meta token {token}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def explain_checkpoint(checkpoint: str | Path, image: str | Path, output: str | Path, block: str | None = None) -> Path:
    """The meta-token attention maps of a LeMeViT scene-recognition run over one image, as a PNG titled with the
    predicted class."""
    from lemevit.engine.eval_predict import load_task
    from lemevit.io.images import read_image
    from lemevit.io.paths import check_outputs_spare_inputs, check_writable_folder

    output, image = Path(output), Path(image)
    if output.suffix.lower() != ".png":
        raise ConfigError("output", f"is a PNG picture: it must end in .png, got {output}")
    task = load_task(checkpoint)
    if task.name != "classification":
        raise ConfigError("checkpoint", f"{checkpoint} is a {task.name} checkpoint; explain draws the meta-token "
                                        "attention of scene-recognition runs")
    if not isinstance(task.model, LeMeViT):
        raise ConfigError("checkpoint", f"{task.hparams.model} has no meta tokens: attention maps are drawn for "
                                        "LeMeViT models only")
    check_writable_folder(output.parent)
    check_outputs_spare_inputs([image], [output])
    x = task.load_image(image)
    with torch.inference_mode():
        probs = task.model(x[None]).softmax(dim=1)[0]
    maps = meta_attention(task.model, x[None], block=block)[0]
    top = int(probs.argmax())
    title = f"{image.name}: {task.class_names[top]} ({float(probs[top]):.0%})"
    return save_meta_attention_png(read_image(image), maps, output, title=title)
