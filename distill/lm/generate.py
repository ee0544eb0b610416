"""Teacher generation (sequence-level KD, data distillation): completions generated once, cached.

The completions file holds, per prompt, the rendered prompt and the teacher's completion as text and
as token ids, with the chain-of-thought rationale and answer stored apart. Its metadata records
what made it: the teacher and tokenizer fingerprints, the sampling settings (greedy by default,
``max_new_tokens``, seed) and the prompt set's hash. Generation is resumable: every few batches the
rows so far are saved (atomically) to a hidden ``.partial`` sibling, and a rerun with the same
teacher and settings reuses every row it finds there or in an earlier output, so no prompt is
generated twice. Sampling is seeded per prompt batch, so a resumed run draws what an unbroken run would.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from distill.config import ChatClientConfig, LMGenerateConfig, PipelineConfig
from distill.lm.batch import hash_arrays, read_parquet, write_parquet
from distill.lm.prompts import LMDataError, PromptTemplate, read_prompts, render_prompt
from distill.lm.teacher import CausalLM, fingerprint_of, load_causal_lm, tokenizer_fingerprint
from distill.models import pick_device

REGENERATE = "rerun the lm_generate stage (dvc repro lm_generate)"
log = logging.getLogger("distill")


@dataclass(frozen=True)
class GenerationSettings:
    """The sampling settings recorded with the completions."""

    max_new_tokens: int = 32
    sampling_temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 13
    chain_of_thought: bool = False
    batch_size: int = 16

    @classmethod
    def from_config(cls, cfg: LMGenerateConfig, seed: int) -> "GenerationSettings":
        return cls(cfg.max_new_tokens, cfg.sampling_temperature, cfg.top_p, seed, cfg.chain_of_thought,
                   cfg.batch_size)


@dataclass
class GenerateResult:
    path: Path
    rows: int
    generated: int
    reused: int
    completion_tokens: int
    seconds: float
    ms_per_token: float | None
    teacher_fingerprint: str
    api: dict | None = None    # a black-box teacher's spend (calls, tokens, estimated cost; api_completion_rows)


def split_rationale(text: str, marker: str) -> tuple[str, str, bool]:
    """``(rationale, answer, found)``: the text before the last ``marker`` and the stripped text after it.

    Without the marker the whole text is the rationale and the answer is empty.
    """
    at = text.rfind(marker)
    if at < 0:
        return text, "", False
    return text[:at], text[at + len(marker):].strip(), True


def rationale_token_count(tokenizer, completion_ids: list[int], rationale: str) -> int:
    """How many leading completion tokens decode to text inside ``rationale``."""
    if not rationale:
        return 0
    count = 0
    for i in range(1, len(completion_ids) + 1):
        if len(tokenizer.decode(completion_ids[:i], skip_special_tokens=True)) > len(rationale):
            break
        count = i
    return count


def _eos_ids(lm: CausalLM) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return {int(e) for e in eos + [lm.tokenizer.eos_token_id] if e is not None}


@torch.inference_mode()
def generate_batch(lm: CausalLM, prompt_texts: list[str], settings: GenerationSettings, seed: int,
                   device: torch.device) -> list[tuple[list[int], list[int], bool]]:
    """``(prompt_ids, completion_ids, finished)`` per prompt; a completion ends with its first EOS."""
    from transformers import GenerationConfig

    tokenizer = lm.tokenizer
    tokenizer.padding_side = "left"
    enc = tokenizer(prompt_texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    sampling = settings.sampling_temperature > 0
    eos = sorted(_eos_ids(lm))
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=sampling,
                              temperature=settings.sampling_temperature if sampling else None,
                              top_p=settings.top_p if sampling else None, top_k=None,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    torch.manual_seed(seed)
    out = lm.model.to(device).eval().generate(**enc, generation_config=config).cpu()
    width = enc["input_ids"].shape[1]
    rows = []
    for b in range(len(prompt_texts)):
        prompt = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
        new = out[b, width:].tolist()
        stop = next((i for i, t in enumerate(new) if t in eos), None)
        rows.append((prompt, new if stop is None else new[:stop + 1], stop is not None))
    return rows


def completion_rows(lm: CausalLM, prompts: pd.DataFrame, template: PromptTemplate, marker: str,
                    settings: GenerationSettings, seed: int, device: torch.device) -> list[dict]:
    """Generate one batch of prompts and describe each completion as a row of the completions file."""
    texts = [render_prompt(lm.tokenizer, template, r) for r in prompts["request"]]
    rows = []
    for (_, p), text, (prompt_ids, completion_ids, finished) in zip(
            prompts.iterrows(), texts, generate_batch(lm, texts, settings, seed, device)):
        completion = lm.tokenizer.decode(completion_ids, skip_special_tokens=True)
        if settings.chain_of_thought:
            rationale, answer, found = split_rationale(completion, marker)
        else:
            rationale, answer, found = "", completion.strip(), True
        rows.append({"prompt_id": p["prompt_id"], "split": p["split"], "request": p["request"],
                     "reference": p["reference"], "prompt": text, "completion": completion,
                     "rationale": rationale, "answer": answer, "answer_found": found, "finished": finished,
                     "prompt_ids": prompt_ids, "completion_ids": completion_ids,
                     "rationale_tokens": rationale_token_count(lm.tokenizer, completion_ids, rationale)})
    return rows


COLUMNS = {"prompt_id": pa.string(), "split": pa.string(), "request": pa.string(), "reference": pa.string(),
           "prompt": pa.string(), "completion": pa.string(), "rationale": pa.string(), "answer": pa.string(),
           "answer_found": pa.bool_(), "finished": pa.bool_(), "prompt_ids": pa.list_(pa.int32()),
           "completion_ids": pa.list_(pa.int32()), "rationale_tokens": pa.int32()}


def completions_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of what later stages rely on: ids, split, prompt and completion tokens, rationale length."""
    return hash_arrays(frame["prompt_id"], frame["split"], frame["completion"],
                       [np.asarray(v, np.int32) for v in frame["prompt_ids"]],
                       [np.asarray(v, np.int32) for v in frame["completion_ids"]],
                       [np.asarray(frame["rationale_tokens"], np.int32)])


def write_completions(path: Path, rows: list[dict], key: dict) -> str:
    """Write completion rows with the generation key and content hash, atomically; returns the hash."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    table = pa.Table.from_pydict({c: frame[c].tolist() for c in COLUMNS}, schema=pa.schema(COLUMNS))
    digest = completions_hash(frame)
    write_parquet(path, table, {**key, "completions_hash": digest, "rows": len(frame)})
    return digest


def read_completions(path: Path, teacher_fingerprint: str | None = None) -> tuple[pd.DataFrame, dict]:
    """The completions and their metadata; refuses a damaged file or one from another teacher."""
    table, meta = read_parquet(path, "teacher completions file", REGENERATE, LMDataError)
    if teacher_fingerprint and meta.get("teacher_fingerprint") != teacher_fingerprint:
        raise LMDataError(f"{path}: generated by teacher {str(meta.get('teacher_fingerprint'))[:12]}, but the "
                          f"teacher is now {teacher_fingerprint[:12]}; {REGENERATE}")
    frame = table.to_pandas()
    if completions_hash(frame) != meta.get("completions_hash"):
        raise LMDataError(f"{path}: content does not match its recorded hash (changed or damaged after it "
                          f"was written); {REGENERATE}")
    return frame, meta


def partial_path(out_path: Path) -> Path:
    return Path(out_path).with_name(f".{Path(out_path).name}.partial")


def reusable_rows(paths: list[Path], key: dict) -> dict[str, dict]:
    """Rows of earlier outputs (or a partial run) made with the same generation key, by prompt id."""
    found: dict[str, dict] = {}
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            frame, meta = read_completions(path)
        except LMDataError as exc:
            log.warning("not reusing %s: %s", path, exc)
            continue
        if {k: meta.get(k) for k in key} == key:
            for row in frame.to_dict("records"):
                found.setdefault(row["prompt_id"], {**row, "prompt_ids": list(row["prompt_ids"]),
                                                    "completion_ids": list(row["completion_ids"])})
    return found


def generate_completions(lm: CausalLM, prompts: pd.DataFrame, prompts_meta: dict, key: dict,
                         settings: GenerationSettings, out_path: Path, device: torch.device,
                         save_every: int = 4) -> tuple[int, int, int, float]:
    """Generate what is missing, saving progress; returns ``(generated, reused, new tokens, seconds)``."""
    from tqdm.auto import tqdm

    out_path, partial = Path(out_path), partial_path(out_path)
    done = reusable_rows([out_path, partial], key)
    todo = prompts[~prompts["prompt_id"].isin(done)]
    template = PromptTemplate.of(prompts_meta, settings.chain_of_thought)
    # Batches of similar prompt length waste less padding; the seed follows the batch's first prompt id,
    # so a resumed run samples exactly what an unbroken run would.
    todo = todo.assign(_len=todo["request"].str.len()).sort_values(["_len", "prompt_id"], kind="stable")
    started, generated, new_tokens = time.perf_counter(), 0, 0
    starts = range(0, len(todo), settings.batch_size)
    for n, start in enumerate(tqdm(starts, desc="teacher generation", unit="batch", disable=not len(todo))):
        chunk = todo.iloc[start:start + settings.batch_size]
        seed = settings.seed * 1_000_003 + int(chunk["prompt_id"].iloc[0], 16) % 1_000_003
        for row in completion_rows(lm, chunk, template, prompts_meta["answer_marker"], settings, seed, device):
            done[row["prompt_id"]] = row
            new_tokens += len(row["completion_ids"])
        generated += len(chunk)
        if (n + 1) % save_every == 0 and start + settings.batch_size < len(todo):
            write_completions(partial, list(done.values()), key)
    seconds = time.perf_counter() - started
    write_completions(out_path, [done[i] for i in prompts["prompt_id"]], key)
    partial.unlink(missing_ok=True)
    return generated, len(prompts) - generated, new_tokens, seconds


def template_key(template: PromptTemplate) -> dict:
    """The prompt template as the completions file records it (part of the key a reused row must match)."""
    return {"instruction": template.system, "examples": [list(example) for example in template.examples]}


def api_fingerprint(api: ChatClientConfig) -> str:
    """The identity of a black-box teacher: ``api:`` + SHA-256 of its endpoint and model name."""
    import hashlib

    return "api:" + hashlib.sha256(f"{api.base_url.rstrip('/')}\0{api.model}".encode()).hexdigest()


def teacher_identity(cfg: PipelineConfig, teacher_dir: Path) -> str:
    """The fingerprint completions must carry: the endpoint's (lm.api set) or the teacher folder's."""
    return api_fingerprint(cfg.lm.api) if cfg.lm.api is not None else fingerprint_of(teacher_dir)


def api_completion_rows(client, tokenizer, prompts: pd.DataFrame, template: PromptTemplate, marker: str,
                        settings: GenerationSettings) -> tuple[list[dict], dict]:
    """Ask a black-box teacher for every prompt (cache first, within budget); rows in the completions format.

    Token ids come from the local tokenizer (``tokenizer``), so the student trains on the teacher's text
    retokenized; a completion the endpoint ended itself (``finish_reason`` stop) gets the EOS token.
    Prompts the budget skipped are left out and counted in the returned summary.
    """
    messages = [template.messages(r) for r in prompts["request"]]
    params = {"max_tokens": settings.max_new_tokens, "temperature": settings.sampling_temperature,
              "top_p": settings.top_p, "seed": settings.seed}
    result = client.generate_many(messages, **params)
    rows = []
    for (_, p), answer in zip(prompts.iterrows(), result.completions):
        if answer is None:
            continue
        finished = answer.finish_reason == "stop"
        ids = tokenizer(answer.text, add_special_tokens=False)["input_ids"]
        ids = ids + [tokenizer.eos_token_id] if finished and tokenizer.eos_token_id is not None else ids
        if settings.chain_of_thought:
            rationale, final, found = split_rationale(answer.text, marker)
        else:
            rationale, final, found = "", answer.text.strip(), True
        prompt = render_prompt(tokenizer, template, p["request"])
        rows.append({"prompt_id": p["prompt_id"], "split": p["split"], "request": p["request"],
                     "reference": p["reference"], "prompt": prompt, "completion": answer.text,
                     "rationale": rationale, "answer": final, "answer_found": found, "finished": finished,
                     "prompt_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"], "completion_ids": ids,
                     "rationale_tokens": len(tokenizer(rationale, add_special_tokens=False)["input_ids"])
                     if rationale else 0})
    summary = result.summary
    answered = [c for c in result.completions if c is not None]
    prompt_tokens = sum(c.prompt_tokens for c in answered)
    completion_tokens = sum(c.completion_tokens for c in answered)
    # This run's payment (requests, total_tokens, estimated_cost) and what the answers cost whenever paid
    # (calls, dataset_tokens, dataset_cost: the cached answers counted at the usage they were paid with).
    return rows, {"calls": len(answered), "requests": summary.requests, "cache_hits": summary.cache_hits,
                  "total_tokens": summary.total_tokens, "estimated_cost": summary.estimated_cost,
                  "dataset_tokens": prompt_tokens + completion_tokens,
                  "dataset_cost": round(client.cfg.cost_of(prompt_tokens, completion_tokens), 6),
                  "skipped": len(summary.skipped), "stopped_by_budget": summary.stopped_by_budget}


def run_api(cfg: PipelineConfig, prompts: pd.DataFrame, prompts_meta: dict, tokenizer_dir: Path,
            out_path: Path, train_pool: int | None = None) -> GenerateResult:
    """lm_generate with a black-box teacher (``lm.api``): completions through the cached, budgeted ChatClient."""
    from transformers import AutoTokenizer

    from distill.lm.client import ChatClient

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    settings = GenerationSettings.from_config(cfg.lm.generate, cfg.seed)
    template = PromptTemplate.of(prompts_meta, settings.chain_of_thought)
    key = {"teacher_fingerprint": api_fingerprint(cfg.lm.api), "teacher_source": f"{cfg.lm.api.base_url} "
           f"({cfg.lm.api.model})", "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
           "settings": asdict(settings), **template_key(template), "answer_marker": prompts_meta["answer_marker"]}
    started = time.perf_counter()
    with ChatClient(cfg.lm.api) as client:
        rows, spend = api_completion_rows(client, tokenizer, prompts, template, prompts_meta["answer_marker"],
                                          settings)
    seconds = time.perf_counter() - started
    if not rows:
        raise LMDataError(f"the teacher endpoint answered none of {len(prompts)} prompts (budget: lm.api."
                          f"max_total_tokens / lm.api.max_cost)")
    if spend["skipped"]:
        log.warning("budget reached: %d of %d prompts have no teacher completion and are left out",
                    spend["skipped"], len(prompts))
    write_completions(out_path, rows, {**key, "api": spend, "train_pool": train_pool})
    tokens = sum(len(r["completion_ids"]) for r in rows)
    return GenerateResult(Path(out_path), len(rows), len(rows) - spend["cache_hits"], spend["cache_hits"], tokens,
                          round(seconds, 2), None, key["teacher_fingerprint"], spend)


def run(cfg: PipelineConfig, prompts_path: Path, teacher_dir: Path, out_path: Path,
        selected: set[str] | None = None) -> GenerateResult:
    """Generate the teacher's completions for the prompt set (the lm_generate stage).

    With ``lm.api`` set the teacher is that endpoint and ``teacher_dir`` only lends its tokenizer. With
    ``selected`` (lm_select's choice, :func:`distill.lm.select.read_selection`) only those training prompts
    are sent, and every held-out one.
    """
    prompts, prompts_meta = read_prompts(prompts_path)
    train_pool = int((prompts["split"] == "train").sum())  # recorded: lm_train's keep_steps scales by it
    if selected is not None:
        prompts = prompts[(prompts["split"] != "train") | prompts["prompt_id"].isin(selected)].reset_index(drop=True)
    if cfg.lm.api is not None:
        return run_api(cfg, prompts, prompts_meta, teacher_dir, out_path, train_pool)
    lm = load_causal_lm(teacher_dir)
    settings = GenerationSettings.from_config(cfg.lm.generate, cfg.seed)
    key = {"teacher_fingerprint": fingerprint_of(teacher_dir), "teacher_source": str(teacher_dir),
           "tokenizer_fingerprint": tokenizer_fingerprint(lm.tokenizer), "settings": asdict(settings),
           **template_key(PromptTemplate.of(prompts_meta, settings.chain_of_thought)),
           "answer_marker": prompts_meta["answer_marker"]}
    generated, reused, new_tokens, seconds = generate_completions(lm, prompts, prompts_meta, key, settings, out_path,
                                                      pick_device(cfg.lm.train.device), cfg.lm.generate.save_every)
    frame, _ = read_completions(out_path)
    tokens = int(frame["completion_ids"].map(len).sum())
    return GenerateResult(Path(out_path), len(frame), generated, reused, tokens, round(seconds, 2),
                          round(1000 * seconds / new_tokens, 2) if new_tokens else None, key["teacher_fingerprint"])
