"""PPO's rollout engines: what samples y ~ pi_theta(.|x) for a batch of prompts (``rollout.engine``).

- ``transformers``: the policy's own ``generate`` (``align.logprobs.sample``); log pi_theta_old(y_t)
  comes from the sampling logits, as PPO always did.
- ``vllm``: a ``vllm.LLM`` in the training process (colocated: on the training GPU, or on the CPU
  with vLLM's CPU build). Prompts go in as token ids (no re-tokenisation), the sampling settings are
  the transformers engine's (temperature, top-p, no top-k, ``max_new_tokens``, stop at EOS). The
  engine never holds weights of its own: it starts with vLLM's ``dummy`` weights and receives the
  policy's before every rollout that follows an update (merged LoRA weights with LoRA; gathered
  under ZeRO-3). On CUDA it sleeps (``LLM.sleep(level=1)``: KV cache freed, weights offloaded)
  from the end of sampling until the next rollout. Its log-probs are not used: vLLM's kernels (and
  bf16) differ from the training forward pass, so PPO recomputes log pi_theta_old(y_t) in the pass
  that gives V_old (``PPOTrainer.rollout``) and the first update's ratio is exactly 1.
- ``auto``: ``vllm`` when CUDA is available and ``vllm`` can be imported, else ``transformers``.

The same engines answer chat prompts for Constitutional AI (``align.cai``, config key ``engine``)
and ``python -m align eval`` (``--engine``): ``chat_generator`` builds a ``ChatGenerator`` that
returns decoded text the way the transformers path always did. There the model does not change,
so the vLLM engine reads the checkpoint folder's weights itself (``load_format="auto"``); a LoRA
adapter's engine is built on its base's architecture and loaded once with the merged weights of
the already loaded (merged) model, through the same ``load_weights`` as PPO's sync. (Merged
rather than vLLM's LoRA support: no ``enable_lora``/``max_lora_rank`` to size, any adapter PEFT
can merge works, ``modules_to_save`` included, and the engine then runs the very model the
transformers path runs.)

Written here rather than taken from TRL: TRL's colocated vLLM (GRPO's ``vllm_mode="colocate"``)
lives in private methods of its trainers, not in an API another trainer can call. The facts it
rests on are vLLM's: ``LLM(enable_sleep_mode=True)``, ``sleep``/``wake_up``, ``reset_prefix_cache``,
and the model's ``load_weights(iterable of (HF name, tensor))``, reached through
``LLM.apply_model`` (in place; on CUDA) or the worker's ``reload_weights`` (vLLM 0.3x's
layer-wise reload; on vLLM's CPU backend); both need the engine core in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which the engine sets) so that tensors pass by reference.
"""
from __future__ import annotations

import importlib.util
import os
import re
from contextlib import contextmanager
from typing import Iterable, Iterator, Literal

import torch
from pydantic import Field

from align.config import Strict
from align.errors import KeelError
from align.logprobs import Samples, response_mask, sample

RolloutEngineName = Literal["auto", "transformers", "vllm"]
ENGINES = ("auto", "transformers", "vllm")

__all__ = ["RolloutEngineName", "VLLMRolloutSettings", "check_engine_available", "resolve_engine",
           "TransformersRolloutEngine", "VLLMRolloutEngine", "build_engine", "policy_weights", "ChatGenerator",
           "chat_generator"]


class VLLMRolloutSettings(Strict):
    """``rollout.vllm``: the colocated vLLM engine's settings (used when the engine is vLLM)."""

    gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="fraction of the GPU's memory vLLM may "
                                          "take for weights and KV cache; the rest is the trainer's")
    sleep: bool = Field(True, description="on CUDA: free the KV cache and offload the engine's weights "
                        "between rollouts (vLLM sleep mode, level 1); ignored on a CPU")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="the engine's weights: auto = bfloat16 on CUDA, float32 on a CPU")
    max_model_len: int | None = Field(None, ge=16, description="tokens per sequence; default: PPO "
                                      "rollout.max_prompt_length + rollout.max_new_tokens, CAI/eval the model's")
    enforce_eager: bool = Field(False, description="no CUDA graphs (faster start, slower sampling)")
    weight_sync: Literal["auto", "in_place", "reload"] = Field(
        "auto", description="how the policy's weights enter the engine: in_place (the model's load_weights, "
        "TRL's route), reload (vLLM's layer-wise reload_weights, needed on vLLM's CPU backend); auto: "
        "in_place on CUDA, reload on a CPU")


def vllm_installed() -> bool:
    """Whether ``import vllm`` can find the package (it is not imported: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def check_engine_available(engine: str, field: str = "rollout.engine") -> None:
    """Raise ValueError (reported by the config loader as ``<field>: ...``) when ``engine`` is
    ``vllm`` and vLLM is not installed in this Python; ``field`` is the setting that asked for it."""
    if engine == "vllm" and not vllm_installed():
        raise ValueError("'vllm' asked for, but the vllm package is not installed in this Python "
                         f"(on a GPU machine: pip install vllm; or set {field} to auto or transformers)")


def resolve_engine(engine: str, cuda: bool | None = None, vllm: bool | None = None,
                   field: str = "rollout.engine") -> str:
    """``auto`` -> ``vllm`` when CUDA is available (``cuda``) and vLLM is installed (``vllm``),
    else ``transformers``; ``transformers``/``vllm`` are returned as given. ``cuda``/``vllm``
    default to what this machine has. Raises ValueError naming ``field`` for another name."""
    if engine not in ENGINES:
        raise ValueError(f"{field}: {engine!r} is not one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    cuda = torch.cuda.is_available() if cuda is None else cuda
    vllm = vllm_installed() if vllm is None else vllm
    return "vllm" if cuda and vllm else "transformers"


class TransformersRolloutEngine:
    """Today's path: ``generate`` on the policy itself, log-probs from the sampling logits. No
    weights to sync and nothing to put to sleep."""

    name = "transformers"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def sample(self, policy, enc: dict, max_new_tokens: int, temperature: float, top_p: float) -> Samples:
        """``align.logprobs.sample`` on ``policy``: ``enc`` left-padded (B, P) -> ``Samples``."""
        return sample(policy, self.tokenizer, enc, max_new_tokens, temperature, top_p)

    def sync(self, accelerator, wrapped_model, version: int) -> None:
        """Nothing to do: the policy samples with its own, current weights."""

    def release(self) -> None:
        """Nothing to do."""


# ------------------------------------------------------------------------------ the policy's weights
_PEFT_PREFIX = re.compile(r"^base_model\.model\.")


def _engine_name(name: str) -> str | None:
    """A PEFT-wrapped parameter's name as the plain model (and vLLM's ``load_weights``) spells it;
    None for the adapters themselves and for the original copy of a ``modules_to_save`` module."""
    if "lora_" in name or ".original_module." in name:
        return None
    name = _PEFT_PREFIX.sub("", name).replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    return name


@contextmanager
def _gathered(params: list, sharded: bool):
    if not sharded:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@contextmanager
def policy_weights(accelerator, wrapped_model) -> Iterator[Iterable[tuple[str, torch.Tensor]]]:
    """The policy's full weights as (Hugging Face name, tensor) pairs, for an engine's ``load_weights``.

    ``wrapped_model``: what accelerate prepared (an ``align.ppo.ActorCritic`` inside). With LoRA the
    adapters are merged into the base weights for the duration of the ``with`` block and unmerged
    after it (the pairs are only valid inside it). Under DeepSpeed ZeRO-3 the weights are gathered
    (LoRA: all at once, as the merge needs each full base weight; else one parameter at a time).
    Raises KeelError under FSDP (its flat shards are not gathered here)."""
    from align.training import weights_are_sharded

    sharded = weights_are_sharded(accelerator)
    if sharded and getattr(accelerator.state, "deepspeed_plugin", None) is None:
        raise KeelError("rollout.engine vllm: syncing FSDP-sharded weights into the engine is not supported; "
                        "use DeepSpeed ZeRO-3, DDP or one process, or rollout.engine: transformers")
    policy = accelerator.unwrap_model(wrapped_model).policy
    lora = hasattr(policy, "merge_adapter")
    if lora:
        params = list(policy.parameters())
        with _gathered(params, sharded):
            policy.merge_adapter()
            try:
                yield ((n, p.data) for n, p in ((_engine_name(n), p) for n, p in policy.named_parameters())
                       if n is not None)
            finally:
                policy.unmerge_adapter()
        return

    def one_at_a_time():
        for n, p in policy.named_parameters():
            with _gathered([p], sharded):
                yield n, p.data

    yield one_at_a_time()


# ------------------------------------------------------------------------------------- vLLM
class VLLMRolloutEngine:
    """A ``vllm.LLM`` colocated with the trainer (module docstring).

    ``model_path``: a folder (or hub id) with the policy's architecture (config.json); with
    ``load_format="dummy"`` (PPO) its weights are never read: the trainer's are loaded by ``sync``
    before the first rollout; ``load_format="auto"`` reads them (CAI, eval). ``eos_id``: the token
    that ends a response. ``max_model_len``: prompt + response tokens (None: the model's). ``seed``: vLLM's; each rollout's per-request seeds are drawn from torch's generator, so
    ``torch.manual_seed`` makes rollouts repeatable. ``distributed``: one engine per process of a
    multi-process run (vLLM's ``external_launcher`` backend, tensor-parallel size 1)."""

    name = "vllm"

    def __init__(self, model_path: str, eos_id: int, pad_id: int, settings: VLLMRolloutSettings,
                 max_model_len: int | None, seed: int = 0, distributed: bool = False, load_format: str = "dummy"):
        self.cuda = torch.cuda.is_available()
        # The engine core in this process, so that its model is reachable for load_weights.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not self.cuda:  # vLLM's CPU build: 1 GiB of KV cache, threads not pinned (shared machines)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        try:
            from vllm import LLM
        except ImportError as e:
            raise KeelError(f"rollout.engine vllm: cannot import vllm ({e})") from None
        dtype = settings.dtype if settings.dtype != "auto" else ("bfloat16" if self.cuda else "float32")
        kwargs = dict(model=model_path, dtype=dtype, seed=seed, load_format=load_format,
                      generation_config="vllm", enforce_eager=settings.enforce_eager)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.cuda:
            kwargs.update(gpu_memory_utilization=settings.gpu_memory_utilization,
                          enable_sleep_mode=settings.sleep)
        if distributed:
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(**kwargs)
        self.weight_sync = settings.weight_sync
        if self.weight_sync == "auto":
            self.weight_sync = "in_place" if self.cuda or not _has_reload() else "reload"
        self.tied_head = all(self.llm.apply_model(_lm_head_is_tied))
        self.eos_id, self.pad_id = eos_id, pad_id
        self.sleeps = self.cuda and settings.sleep
        self.asleep = False
        # the update whose weights the engine holds; None: dummy weights; "checkpoint": the folder's
        self.version: int | str | None = None if load_format == "dummy" else "checkpoint"

    # -- weights ---------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (HF name, tensor) pairs into the engine's model (the model's ``load_weights`` maps
        HF names onto vLLM's fused qkv / gate-up layers) and drop the prefix cache, whose KV
        entries were computed with the old weights. ``self.weight_sync``:

        - ``in_place``: the model's ``load_weights`` through ``LLM.apply_model``, each weight
          copied into the existing parameter (TRL's colocate route). On CUDA the tensors stay in
          vLLM's sleep-mode pool, so ``sleep`` keeps offloading them. It fails on vLLM's CPU
          backend, whose post-load processing replaced the linear layers' parameters.
        - ``reload``: vLLM 0.3x's ``reload_weights`` on the worker (layer-wise reload: load, then
          each layer's post-load processing again), which the CPU backend needs. Its tied output
          layer keeps the old tensor (vLLM's documented limitation), so it is tied again here."""
        if self.weight_sync == "reload":
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            if self.tied_head:
                self.llm.apply_model(_retie_lm_head)
        else:
            self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def sync(self, accelerator, wrapped_model, version: int) -> None:
        """Wake the engine and load the policy's current weights unless it already holds those of
        update ``version``. A collective under ZeRO-3: call it on every process."""
        if self.version == version:
            return
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        with policy_weights(accelerator, wrapped_model) as weights:
            self.load_weights(weights)
        self.version = version

    def release(self) -> None:
        """After sampling: on CUDA with ``sleep``, free the KV cache and offload the weights."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def close(self) -> None:
        """Drop the engine (its weights and KV cache) when no more generation is coming; the
        object cannot generate afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        del llm
        import gc

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # -- sampling ----------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, top_p: float,
                 top_k: int = 0, repetition_penalty: float = 1.0, progress: bool = False) -> list[list[int]]:
        """One response per prompt: lists of token ids in, lists of token ids out (ending with
        EOS unless ``max_new_tokens`` was reached). ``temperature`` 0 is greedy. Untruncated
        sampling (no top-k, no min-p) unless ``top_p`` < 1 or ``top_k`` > 0 (0: none), as the
        transformers engine. ``repetition_penalty``: transformers' and vLLM's (prompt and output
        tokens), 1.0 none. ``progress``: vLLM's progress bar."""
        from vllm import SamplingParams

        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        base = int(torch.randint(0, 2 ** 31 - 1, ()).item())
        sampled = temperature > 0
        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p if sampled else 1.0,
                                 top_k=top_k if sampled else 0, min_p=0.0, repetition_penalty=repetition_penalty,
                                 max_tokens=max_new_tokens, stop_token_ids=[self.eos_id],
                                 detokenize=False, seed=base + i) for i in range(len(prompt_ids))]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outs = self.llm.generate(prompts, params, use_tqdm=progress)
        return [list(o.outputs[0].token_ids) for o in outs]

    def sample(self, policy, enc: dict, max_new_tokens: int, temperature: float, top_p: float) -> Samples:
        """The transformers engine's ``Samples`` from vLLM: ``enc`` left-padded (B, P); responses
        (B, T) padded with the pad token after each response's end; ``logprobs`` None (the
        trainer recomputes them with the policy). ``policy`` is not used (its weights were synced)."""
        ids, attention = enc["input_ids"], enc["attention_mask"]
        prompts = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), attention.cpu())]
        outs = self.generate(prompts, max_new_tokens, temperature, top_p)
        T = max(1, max(len(o) for o in outs))
        responses = torch.full((len(outs), T), self.pad_id, dtype=torch.long)
        produced = torch.zeros((len(outs), T), dtype=torch.long)
        for i, o in enumerate(outs):
            responses[i, :len(o)] = torch.tensor(o, dtype=torch.long)
            produced[i, :len(o)] = 1
        mask = response_mask(responses, self.eos_id) * produced
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, self.pad_id))
        device = ids.device
        return Samples(ids, attention.long(), responses.to(device), mask.to(device), None)


def _has_reload() -> bool:
    """Whether this vLLM has the layer-wise ``reload_weights`` (0.3x)."""
    return importlib.util.find_spec("vllm.model_executor.model_loader.reload") is not None


def _heads(model):
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    heads = [m for m in model.modules() if isinstance(m, ParallelLMHead)]
    embeds = [m for m in model.modules() if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)]
    return heads, embeds


def _lm_head_is_tied(model) -> bool:
    """Whether the engine's output layer shares its weight with the input embedding (tied
    embeddings, e.g. SmolLM2, Llama-3.2-1B/3B, Qwen2.5 up to 3B)."""
    heads, embeds = _heads(model)
    return len(heads) == 1 and len(embeds) == 1 and heads[0].weight is embeds[0].weight


def _retie_lm_head(model) -> None:
    """After a layer-wise reload: vLLM reloads a tied model's embedding only (the checkpoint has no
    lm_head.weight) and puts the output layer's old tensor back (its documented limitation on
    tied parameters), so the output layer is tied to the new embedding again and its post-load
    processing (the CPU backend's packed GEMM) redone."""
    heads, embeds = _heads(model)
    head = heads[0]
    head.tie_weights(embeds[0])
    head.quant_method.process_weights_after_loading(head)


def build_engine(name: str, settings, tokenizer, source, accelerator, seed: int):
    """The engine ``rollout.engine`` names (``auto`` resolved) for a trainer: ``settings`` is
    ``rollout:`` (``RolloutSettings``), ``source`` the policy's ``ModelSource`` (an adapter's
    engine is built on its base's architecture)."""
    name = resolve_engine(name)
    if name == "transformers":
        return TransformersRolloutEngine(tokenizer)
    check_engine_available(name)
    base = source.base if getattr(source, "base", None) is not None else source
    max_len = settings.vllm.max_model_len or settings.max_prompt_length + settings.max_new_tokens
    return VLLMRolloutEngine(base.path, tokenizer.eos_token_id, tokenizer.pad_token_id, settings.vllm, max_len,
                             seed=seed + accelerator.process_index, distributed=accelerator.num_processes > 1)


# ---------------------------------------------------------------------- chat generation (CAI, eval)
class ChatGenerator:
    """Answers to chat prompts from a loaded model, with either engine: conversations in, text out.

    The transformers engine is what CAI and eval always ran: ``encode_chats`` (chat template,
    generation prompt, left padding), ``model.generate`` with ``align.generate.generation_kwargs``
    (greedy at temperature 0; else sampling with ``temperature``, ``top_p`` and the model's
    generation config for the rest), and the new tokens decoded with special tokens skipped and
    stripped. The vLLM engine gets the same token ids (the pads removed) and the same settings:
    greedy stays greedy; sampling takes transformers' effective ``top_k`` (the model's generation
    config, else transformers' default 50) and ``repetition_penalty``; it stops at the tokenizer's
    EOS after at most ``max_new_tokens``; its tokens are decoded the same way."""

    def __init__(self, engine, model, tokenizer):
        self.engine, self.model, self.tok = engine, model, tokenizer
        self.name = engine.name
        gc = getattr(model, "generation_config", None)
        top_k = getattr(gc, "top_k", None)
        self.top_k = 50 if top_k is None else int(top_k)  # transformers' default when unset
        self.repetition_penalty = float(getattr(gc, "repetition_penalty", None) or 1.0)

    @torch.inference_mode()
    def __call__(self, conversations: list[list[dict]], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 0.95, progress: bool = False) -> list[str]:
        """One answer per conversation (list of {"role", "content"} messages), stripped text.
        ``temperature`` 0: greedy; ``top_p`` applies when sampling. ``progress``: the vLLM
        engine's bar over the whole batch (the transformers engine's callers batch themselves)."""
        from align.generate import encode_chats, generation_kwargs

        if not conversations:
            return []
        if self.name == "transformers":
            enc = encode_chats(self.tok, conversations, self.model.device)
            out = self.model.generate(**enc, **generation_kwargs(self.tok, max_new_tokens, temperature, top_p))
            new = out[:, enc["input_ids"].shape[1]:]
        else:
            enc = encode_chats(self.tok, conversations, "cpu")
            prompts = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
            new = self.engine.generate(prompts, max_new_tokens, temperature, top_p, top_k=self.top_k,
                                       repetition_penalty=self.repetition_penalty, progress=progress)
        return [t.strip() for t in self.tok.batch_decode(new, skip_special_tokens=True)]

    def close(self) -> None:
        """Free the engine's memory (vLLM); nothing to do for transformers."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def chat_generator(engine: str, model, tokenizer, source, settings: VLLMRolloutSettings | None = None,
                   seed: int = 0, field: str = "engine") -> ChatGenerator:
    """A ``ChatGenerator`` for ``model`` (loaded by ``align.models.load_policy``, adapters merged)
    on the engine ``engine`` names (auto|transformers|vllm; ``auto`` resolved as for PPO).
    ``source``: the model's ``ModelSource``; vLLM reads a full model's weights from
    ``source.path``; an adapter's engine is built on its base's architecture and loaded with
    ``model``'s (merged) weights. ``settings``: ``VLLMRolloutSettings`` (defaults if None).
    ``field``: the setting named in errors. Raises KeelError when vLLM is asked for but not
    installed, or when ``model`` is an unmerged PEFT model."""
    try:
        name = resolve_engine(engine, field=field)
        check_engine_available(name, field)
    except ValueError as e:
        raise KeelError(f"{field}: {e}" if not str(e).startswith(field) else str(e)) from None
    if name == "transformers":
        return ChatGenerator(TransformersRolloutEngine(tokenizer), model, tokenizer)
    settings = settings or VLLMRolloutSettings()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if getattr(source, "kind", None) == "adapter":
        if hasattr(model, "peft_config"):
            raise KeelError(f"{field} vllm: load the adapter merged (load_policy's default) to generate with vLLM")
        base = source.base
        while base.kind == "adapter":  # an adapter trained on an adapter: the architecture is the first base's
            base = base.base
        engine_ = VLLMRolloutEngine(base.path, eos, pad, settings, settings.max_model_len, seed=seed)
        engine_.load_weights((n, p.data) for n, p in model.named_parameters())
        engine_.version = "checkpoint"
    else:
        engine_ = VLLMRolloutEngine(source.path, eos, pad, settings, settings.max_model_len, seed=seed,
                                    load_format="auto")
    return ChatGenerator(engine_, model, tokenizer)
