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
    """Prompts are fitted to the template (a system turn folded in where it has none);
    generation stops at eos and at the template's end-of-turn token (gemma's <end_of_turn>)."""
    from transformers import AutoTokenizer

    from ..data.chat import fit_messages
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [fit_messages(tok, p) for p in prompts]
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        return _generate_vllm(model_dir, prompts, max_new_tokens, stop_ids(tok))
    return _generate_hf(model_dir, prompts, max_new_tokens, batch_size)


def stop_ids(tok) -> list[int]:
    from ..data.chat import end_of_turn_ids
    return [i for i in [tok.eos_token_id, *end_of_turn_ids(tok)] if isinstance(i, int)]


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
                                 pad_token_id=tok.pad_token_id, eos_token_id=stop_ids(tok))
        for row in gen[:, enc["input_ids"].shape[1]:]:
            outs.append(tok.decode(row, skip_special_tokens=True).strip())
    return outs


def _generate_vllm(model_dir: str, prompts, max_new_tokens: int, stop: list[int]) -> list[str]:
    from ..gen.vllm_worker import generate_chat
    outs = generate_chat(model_dir, prompts, temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, n=1, seed=0,
                         stop_token_ids=stop)
    return [o[0].strip() for o in outs]
