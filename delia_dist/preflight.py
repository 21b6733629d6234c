"""What would stop a job in its first minutes, checked on the batch node before srun starts
64 ranks: the attention implementation and DeepSpeed ops the config needs, the model and
its tokenizer (chat template, end-of-turn token), disk for a checkpoint plus the universal
copy, the save time against the preemption warning and the step time against the
collective timeout, and the network interface settings. Each failure is one line naming
what to change.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

GB = 1e9
# The sbatch scripts' --signal=B:USR1@600: the ranks have this long to save before the limit.
DEFAULT_PREEMPT_LEAD_S = 600.0


@dataclass
class Finding:
    check: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"[preflight] {'ok  ' if self.ok else 'FAIL'} {self.check}: {self.message}"


def attention(cfg) -> Finding:
    impl = cfg.model.attn_implementation or "sdpa"
    if impl in ("sdpa", "eager"):
        return Finding("attention", True, f"{impl} (torch {_version('torch')}, nothing to install)")
    if impl == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available
        if is_flash_attn_2_available():
            return Finding("attention", True, f"flash_attention_2 (flash-attn {_version('flash_attn')})")
        why = "not installed" if importlib.util.find_spec("flash_attn") is None else "installed but unusable here"
        return Finding("attention", False, f"model.attn_implementation: flash_attention_2 but flash-attn is {why}: "
                                           "set model.attn_implementation: sdpa (packed samples stay isolated)")
    return Finding("attention", True, f"{impl}: not checked here (transformers resolves it at model load)")


def deepspeed_ops(cfg) -> Finding:
    try:
        import deepspeed
        from deepspeed.git_version_info import installed_ops
    except Exception as e:  # noqa: BLE001 (any import failure is the finding)
        return Finding("deepspeed", False, f"import deepspeed failed ({type(e).__name__}: {_one_line(e)}); "
                                           "reinstall with scripts/install.sh")
    ds = cfg.deepspeed
    if ds.torch_adam:
        kind = "fused" if ds.adam_fused else "foreach"
        return Finding("deepspeed", True, f"{deepspeed.__version__}, torch AdamW ({kind}): no compiled op needed")
    op = "cpu_adam" if ds.offload_optimizer != "none" else "fused_adam"
    if installed_ops.get(op):
        return Finding("deepspeed", True, f"{deepspeed.__version__}, {op} prebuilt")
    return Finding("deepspeed", False, f"DeepSpeed's Adam needs {op}, not prebuilt in this install: every rank "
                                       "would JIT-compile it at start (nvcc, ninja, one lock in ~/.cache); set "
                                       "deepspeed.torch_adam: true (or reinstall with DS_BUILD_"
                                       f"{op.upper()}=1)")


def model_and_tokenizer(cfg) -> list[Finding]:
    from .data.records import tokenize_messages
    from .model.build import load_tokenizer

    out = []
    m = cfg.model
    if m.name_or_path:
        path = Path(m.name_or_path)
        if path.is_dir():
            weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
            if not (path / "config.json").is_file() or not weights:
                missing = "config.json" if not (path / "config.json").is_file() else "weight files (*.safetensors)"
                out.append(Finding("model", False, f"model.name_or_path {path}: no {missing}; point it at a model "
                                                   "directory (delia model fetch)"))
            else:
                size = sum(w.stat().st_size for w in weights)
                out.append(Finding("model", True, f"{path}: config.json + {len(weights)} weight files, "
                                                  f"{size / GB:.1f} GB"))
        else:
            try:
                from transformers import AutoConfig
                AutoConfig.from_pretrained(m.name_or_path, trust_remote_code=m.trust_remote_code)
                out.append(Finding("model", True, f"{m.name_or_path}: config resolves (hub id or cache)"))
            except Exception as e:  # noqa: BLE001
                out.append(Finding("model", False, f"model.name_or_path {m.name_or_path}: not a local directory "
                                                   f"and not loadable ({type(e).__name__}); fetch it first "
                                                   "(delia model fetch) and point model.name_or_path at it"))
    try:
        tok = load_tokenizer(m)
    except Exception as e:  # noqa: BLE001
        source = m.tokenizer or m.name_or_path
        return out + [Finding("tokenizer", False, f"{source}: does not load ({type(e).__name__}: "
                                                  f"{_one_line(e)}); set model.tokenizer to a tokenizer directory")]
    if not tok.chat_template:
        return out + [Finding("tokenizer", False, "no chat template: use an instruct model's tokenizer "
                                                  "(model.tokenizer) or one with a chat_template")]
    ids, mask = tokenize_messages(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    trained = [int(i) for i, keep in zip(ids, mask) if keep]
    special = set(tok.all_special_ids) | {i for i, a in tok.added_tokens_decoder.items() if a.special}
    if not trained or trained[-1] not in special:
        return out + [Finding("tokenizer", False, "the chat template ends an assistant turn with no special "
                                                  "token, so the model never learns to stop: use a template that "
                                                  "closes turns with one (<|eot_id|>, <|im_end|>)")]
    end = tok.convert_ids_to_tokens(trained[-1])
    return out + [Finding("tokenizer", True, f"chat template, end-of-turn token {end}, {len(tok)} tokens")]


def disk(cfg, result) -> Finding:
    """A save writes a whole step dir before the oldest is removed; an elastic resume adds
    DeepSpeed's universal copy beside it."""
    st = result.storage_gb
    need = next(v for k, v in st.items() if k.startswith("checkpoint: whole step dir"))
    need += st["elastic resume: universal copy (once, on disk)"]
    where = Path(cfg.checkpoint_dir)
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free / GB
    text = (f"{cfg.checkpoint_dir}: {free:,.1f} GB free on {probe}, a checkpoint plus the universal copy "
            f"needs {need:,.1f} GB")
    if free < need:
        return Finding("disk", False, text + "; free space or set checkpoint.dir to a larger filesystem")
    return Finding("disk", True, text)


def timeouts(result, environ: Mapping[str, str], preempt_lead_s: float, step_known: bool) -> list[Finding]:
    from .plan.checkpoint import DEFAULT_DIST_TIMEOUT_S
    t = result.checkpoint_times
    try:
        timeout = float(environ.get("DELIA_DIST_TIMEOUT", DEFAULT_DIST_TIMEOUT_S))
    except ValueError:
        return [Finding("timeouts", False, f"DELIA_DIST_TIMEOUT={environ.get('DELIA_DIST_TIMEOUT')!r} is not a "
                                           "number of seconds")]
    out = [Finding("timeouts", True, f"save ~{t.save_s:.0f} s, load ~{t.load_s:.0f} s (other world size "
                                     f"~{t.elastic_load_s:.0f} s) at {t.bandwidth_gbps:g} GB/s: collectives wait "
                                     f"up to {max(t.bound_s, timeout):.0f} s there, {timeout:.0f} s elsewhere")]
    step = t.step_s if step_known else 0.0
    if t.save_s + step > preempt_lead_s:
        out.append(Finding("timeouts", False, f"a save (~{t.save_s:.0f} s) after the last step (~{step:.0f} s) "
                                              f"outlasts the preemption warning ({preempt_lead_s:.0f} s): raise "
                                              "#SBATCH --signal=B:USR1@N and DELIA_PREEMPT_LEAD above "
                                              f"{1.5 * (t.save_s + step):.0f}"))
    if step_known and 2 * t.step_s > timeout:
        out.append(Finding("timeouts", False, f"DELIA_DIST_TIMEOUT={timeout:.0f} s is under two steps "
                                              f"(~{t.step_s:.0f} s each): a slow rank trips it; raise it"))
    return out


def interfaces(environ: Mapping[str, str], names: Optional[list[str]] = None) -> list[Finding]:
    from launcher.netif import ifname_problem, interface_names

    names = interface_names() if names is None else names
    out = []
    for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        value = environ.get(var)
        if not value:
            out.append(Finding("network", True, f"{var} unset (picked per rank)"))
            continue
        problem = ifname_problem(var, value, names)
        out.append(Finding("network", problem is None, problem and f"{problem}: export {var} with one of them"
                           or f"{var}={value} names interfaces on this node"))
    return out


def _one_line(e: Exception, limit: int = 120) -> str:
    return " ".join(str(e).split())[:limit]


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return "?"
