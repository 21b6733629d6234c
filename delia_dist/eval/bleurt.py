"""BLEURT-20 from a checkpoint the user downloaded (PyTorch port, package bleurt-pytorch)."""
from __future__ import annotations

from ..errors import UserError


def bleurt_scores(checkpoint: str, hypotheses: list[str], references: list[str], batch_size: int = 16) -> list[float]:
    try:
        import torch
        from bleurt_pytorch import BleurtForSequenceClassification, BleurtTokenizer
    except ImportError:
        raise UserError("eval.bleurt_checkpoint is set but the BLEURT PyTorch port is not installed: "
                        "pip install bleurt-pytorch (then point at e.g. a local lucadiliello/BLEURT-20 dir)") from None
    tok = BleurtTokenizer.from_pretrained(checkpoint)
    model = BleurtForSequenceClassification.from_pretrained(checkpoint).eval()
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(hypotheses), batch_size):
            enc = tok(references[i:i + batch_size], hypotheses[i:i + batch_size], padding="longest",
                      truncation=True, return_tensors="pt")
            scores += model(**enc).logits.flatten().tolist()
    return scores
