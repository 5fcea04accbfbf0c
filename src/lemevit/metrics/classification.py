"""Scene classification scores: top-1 and top-5 accuracy, per-class precision, recall and F1, the confusion
matrix."""
from __future__ import annotations

import torch

__all__ = ["classification_metrics"]


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """top1, top5, per-class precision/recall/F1 and the confusion matrix (rows: true, columns: predicted)."""
    n = len(class_names)
    pred = probs.argmax(dim=1)
    k = min(5, n)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    precision = tp / confusion.sum(dim=0).clamp(min=1)
    recall = tp / confusion.sum(dim=1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    return {
        "num_images": int(labels.numel()),
        "top1": float((pred == labels).double().mean()),
        "top5": float((probs.topk(k, dim=1).indices == labels[:, None]).any(dim=1).double().mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(confusion[i].sum())} for i, name in enumerate(class_names)},
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
    }
