"""BLEURT from a PyTorch checkpoint the user downloaded (the lucadiliello/BLEURT-20 format:
config.json with model_type "bleurt", weights under "bleurt.*" + "classifier.*", and
spm.model or vocab.txt/tokenizer.json).

Google's `bleurt` needs TensorFlow, and the `bleurt-pytorch` package that defines this
format does not import under transformers 5. The network is a RemBERT-shaped encoder
(small input embeddings projected to the hidden size, post-LN BERT layers, tanh pooler on
[CLS]) plus a linear regression head, so we load the weights into transformers'
RemBertModel by renaming keys, strictly: a checkpoint with a key we do not place, or a
model weight the checkpoint lacks, is an error rather than a silently random score.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")


def _rename(key: str) -> str:
    key = key.removeprefix("bleurt.")
    return key.replace("encoder.embedding_projection.", "encoder.embedding_hidden_mapping_in.")


def _load_state(ckpt: Path) -> dict:
    import torch
    st = sorted(ckpt.glob("*.safetensors"))
    if st:
        from safetensors.torch import load_file
        state = {}
        for f in st:
            state.update(load_file(str(f)))
        return state
    bins = sorted(ckpt.glob("pytorch_model*.bin"))
    if not bins:
        raise UserError(f"{ckpt}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for f in bins:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def _load_tokenizer(ckpt: Path):
    """BLEURT-20 ships spm.model (read as in bleurt-pytorch: DeBERTa-v2's sentencepiece
    tokenizer with BERT's special tokens); older BLEURT ports ship a WordPiece vocab.txt."""
    specials = dict(bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]", sep_token="[SEP]",
                    pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    if (ckpt / "spm.model").is_file():
        try:
            from transformers import DebertaV2Tokenizer
            return DebertaV2Tokenizer.from_pretrained(str(ckpt), do_lower_case=False, **specials)
        except ImportError as e:
            raise UserError(f"{ckpt}/spm.model needs the sentencepiece package ({e}): "
                            "pip install sentencepiece -c .venv/constraints.txt") from None
    if (ckpt / "vocab.txt").is_file() or (ckpt / "tokenizer.json").is_file():
        from transformers import BertTokenizer
        return BertTokenizer.from_pretrained(str(ckpt))
    raise UserError(f"{ckpt}: no BLEURT tokenizer (spm.model, vocab.txt or tokenizer.json)")


class Bleurt:
    """score(references, candidates) -> one float per pair, higher is better."""

    def __init__(self, checkpoint: str | Path):
        import torch
        from transformers import RemBertConfig, RemBertModel

        ckpt = Path(checkpoint)
        cfg_path = ckpt / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"eval.bleurt_checkpoint {ckpt}: no config.json (expected a PyTorch BLEURT dir, "
                            "e.g. a local copy of lucadiliello/BLEURT-20)")
        raw = json.loads(cfg_path.read_text())
        if raw.get("model_type") != "bleurt":
            raise UserError(f"{cfg_path}: model_type is {raw.get('model_type')!r}, expected 'bleurt' "
                            "(the TensorFlow BLEURT checkpoints need converting to the PyTorch format)")
        missing = [k for k in _CONFIG_KEYS if k not in raw]
        if missing:
            raise UserError(f"{cfg_path}: missing {missing}")
        emb = raw.get("embedding_size") or raw["hidden_size"]
        config = RemBertConfig(**{k: raw[k] for k in _CONFIG_KEYS}, input_embedding_size=emb,
                               output_embedding_size=emb, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, bos_token_id=None, eos_token_id=None)
        self.encoder = RemBertModel(config, add_pooling_layer=True)
        self.head = torch.nn.Linear(raw["hidden_size"], raw.get("num_labels", 1))
        state = {_rename(k): v for k, v in _load_state(ckpt).items() if not k.endswith("position_ids")}
        head = {k.removeprefix("classifier."): state.pop(k) for k in list(state) if k.startswith("classifier.")}
        if not raw.get("embedding_size"):  # no projection in the checkpoint: identity
            state["encoder.embedding_hidden_mapping_in.weight"] = torch.eye(emb)
            state["encoder.embedding_hidden_mapping_in.bias"] = torch.zeros(emb)
        want = self.encoder.state_dict().keys()
        unknown, absent = sorted(state.keys() - want), sorted(want - state.keys())
        if unknown or absent or set(head) != {"weight", "bias"}:
            raise UserError(f"{ckpt}: not a BLEURT checkpoint this loader understands "
                            f"(unplaced weights {unknown[:5]}, missing {absent[:5]}, head {sorted(head)})")
        self.encoder.load_state_dict(state, strict=True)
        self.head.load_state_dict(head, strict=True)
        self.encoder.eval()
        self.head.eval()
        self.tokenizer = _load_tokenizer(ckpt)
        self.max_length = raw["max_position_embeddings"]

    def score(self, references: list[str], candidates: list[str], batch_size: int = 16) -> list[float]:
        import torch
        if len(references) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates for {len(references)} references")
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(references), batch_size):
                enc = self.tokenizer(references[i:i + batch_size], candidates[i:i + batch_size], padding="longest",
                                     truncation=True, max_length=self.max_length, return_tensors="pt")
                pooled = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      token_type_ids=enc.get("token_type_ids")).pooler_output
                out += self.head(pooled)[:, 0].tolist()
        return out


def bleurt_scores(checkpoint: str, hypotheses: list[str], references: list[str], batch_size: int = 16) -> list[float]:
    return Bleurt(checkpoint).score(references, hypotheses, batch_size)
