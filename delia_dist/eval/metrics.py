"""Task metrics: BLEU/chrF (sacrebleu), DELIA format accuracy/precision/recall/F1."""
from __future__ import annotations

from .format_parse import parse_answer


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}


def sentence_bleu(hyp: str, ref: str) -> float:
    import sacrebleu
    return sacrebleu.sentence_bleu(hyp, [ref]).score


def format_scores(outputs: list[str], gold: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Positive class 'yes' (a hallucination). Malformed outputs are wrong predictions: a
    malformed answer on a 'yes' item is a false negative, on a 'no' item a false positive."""
    rows = []
    for out, g in zip(outputs, gold, strict=True):
        g = g.strip().lower()
        parsed = parse_answer(out)
        pred = parsed["hallucination"] if parsed else None
        rows.append({"prediction": pred if pred else "malformed", "gold": g, "correct": pred == g})
    return format_scores_from_rows(rows), rows


def format_scores_from_rows(rows: list[dict]) -> dict[str, float]:
    """The scores of judged rows; the bootstrap resamples rows and calls this again."""
    tp = fp = tn = fn = well = 0
    for r in rows:
        pred, g = r["prediction"], r["gold"]
        well += pred != "malformed"
        if g == "yes":
            tp += pred == "yes"
            fn += pred != "yes"
        else:
            tn += pred == "no"
            fp += pred != "no"
    n = max(len(rows), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "well_formed": well / n}
