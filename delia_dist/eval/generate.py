"""Generate answers for evaluation: vLLM when its environment is installed (.venv-gen, the
same engine and worker as sampling), transformers otherwise. Greedy decoding so results
are reproducible."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    from ..gen.vllm_worker import gen_python
    return gen_python().exists()


def generate(model_dir: str, prompts: list[list[dict]], max_new_tokens: int, backend: str = "auto",
             batch_size: int = 16) -> list[str]:
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        return _generate_vllm(model_dir, prompts, max_new_tokens)
    return _generate_hf(model_dir, prompts, max_new_tokens, batch_size)


def _generate_hf(model_dir: str, prompts, max_new_tokens: int, batch_size: int) -> list[str]:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    outs: list[str] = []
    for i in tqdm(range(0, len(texts), batch_size), desc=f"generate {model_dir}", leave=False):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:]:
            outs.append(tok.decode(row, skip_special_tokens=True).strip())
    return outs


def _generate_vllm(model_dir: str, prompts, max_new_tokens: int) -> list[str]:
    from ..gen.vllm_worker import generate_chat
    outs = generate_chat(model_dir, prompts, temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, n=1, seed=0)
    return [o[0].strip() for o in outs]
