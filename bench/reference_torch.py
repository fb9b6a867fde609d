#!/usr/bin/env python3
"""The reference for `secvec-experiments bench-suite`: the same cases with PyTorch + transformers +
PEFT, written as the same JSON, so that both can be run on one machine and compared
(`secvec-experiments bench-suite --compare <this JSON>` adds a ratio column).

Cases (random weights, fixed shapes):
  train-lora   LoRA r=8 alpha=16 on q_proj, v_proj (PEFT), AdamW lr 1e-5, global-norm clip 1.0,
               batch 8 x 128 random tokens, loss on every position
  train-lora-all  the same on all seven projections (q, k, v, o, gate, up, down): the headline's attack
  train-lora-sv   train-lora-all plus a second, frozen LoRA adapter on the same seven that is active
                  in the forward pass (the security vectors): the headline's attack with vectors
  train-full   the same, every weight trained
  generate     greedy, 32 random prompt tokens, 32 new tokens (no early stop), KV cache, batch 1/16/64

Each case runs in its own process so its peak memory (host RSS, torch.cuda.max_memory_allocated)
and its warm-up are its own. Speeds are medians after the warm-up steps.

  python3 bench/reference_torch.py --device cuda --dtype f32 --out results/benchmarks/reference-torch-cuda-f32.json
  python3 bench/reference_torch.py --device cuda --dtype bf16   # bf16 autocast, f32 master weights

Needs torch, transformers and peft (not installed by the project).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         tie_word_embeddings=True),
    # meta-llama/Llama-3.2-1B's shape
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                     tie_word_embeddings=True),
}


ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def flops_per_train_token(shape, params, full, seq):
    s = SHAPES[shape]
    attn = 12.0 * s["num_hidden_layers"] * s["hidden_size"] * seq
    return 6.0 * params + attn if full else 4.0 * params + attn * 2.0 / 3.0


def run_case(args, spec):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape, case, *rest = spec.split(":")
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048, attn_implementation=args.attn)
    model = LlamaForCausalLM(cfg).to(dev)
    params = sum(p.numel() for p in model.parameters())
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    half = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.dtype)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = dict(shape=shape, case=case, params=params, trainable_params=0, model_tflops=None,
               peak_host_mib=None, peak_gpu_mib=None, error=None)

    if case == "generate":
        batch = int(rest[0]) if rest else 1
        if half is not None:
            model = model.to(half)
        model.eval()
        ids = torch.randint(3, cfg.vocab_size, (batch, args.prompt_tokens), device=dev)
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                  use_cache=True, pad_token_id=0, eos_token_id=None)

        def call():
            with torch.no_grad():
                g = model.generate(input_ids=ids, attention_mask=mask, **kw)
            sync()
            assert g.shape[1] == args.prompt_tokens + args.new_tokens

        t = time.perf_counter(); call(); warm = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
        secs = statistics.median(times)
        tps = batch * args.new_tokens / secs
        out.update(batch=batch, tokens_per_s=tps, warmup_seconds=warm, seconds=secs,
                   model_tflops=2.0 * params * tps / 1e12)
    else:
        full = case == "train-full"
        if not full:
            from peft import LoraConfig, get_peft_model
            targets = ["q_proj", "v_proj"] if case == "train-lora" else ALL_PROJECTIONS
            lora = lambda: LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
            model = get_peft_model(model, lora(), adapter_name="task")
            if case == "train-lora-sv":
                # Both adapters active in the forward pass, only the task adapter trained.
                model.add_adapter("security", lora())
                model.base_model.set_adapter(["task", "security"])
                for name, p in model.named_parameters():
                    p.requires_grad = ".task." in name and "lora_" in name
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-5, eps=1e-8, weight_decay=0.0)
        ids = torch.randint(3, cfg.vocab_size, (args.train_batch, args.seq_len), device=dev)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            if half is not None:
                with torch.autocast(device_type=dev.type, dtype=half):
                    loss = model(input_ids=ids, labels=ids).loss
            else:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sync()

        t = time.perf_counter()
        for _ in range(max(1, args.warmup_steps)):
            step()
        warm = time.perf_counter() - t
        times = []
        for _ in range(max(1, args.steps)):
            t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
        secs = statistics.median(times)
        tps = args.train_batch * args.seq_len / secs
        out.update(batch=args.train_batch, tokens_per_s=tps, warmup_seconds=warm, seconds=secs,
                   trainable_params=sum(p.numel() for p in trainable),
                   model_tflops=flops_per_train_token(shape, params, full, args.seq_len) * tps / 1e12)
    out["peak_host_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if dev.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def device_name(args):
    import torch
    if args.device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name} ({torch.get_num_threads()} threads)"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--shapes", default="smollm2-135m,llama-1b")
    p.add_argument("--cases", default="train-lora,train-full,generate")
    p.add_argument("--gen-batches", default="1,16,64")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--attn", default="sdpa", help="transformers attn_implementation (sdpa, eager)")
    p.add_argument("--case-timeout", type=int, default=900)
    p.add_argument("--out", default=None, help="JSON path (default results/benchmarks/reference-torch-<device>-<dtype>.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    try:
        import peft  # noqa: F401
        import torch
        import transformers
    except ImportError as e:
        sys.exit(f"reference_torch.py needs torch, transformers and peft: {e}")

    if args.child:
        print("SECVEC_CASE " + json.dumps(run_case(args, args.child)), flush=True)
        return

    specs = []
    for s in args.shapes.split(","):
        if s not in SHAPES:
            sys.exit(f"unknown shape {s!r} (one of {', '.join(SHAPES)})")
        for c in args.cases.split(","):
            if c == "generate":
                specs += [f"{s}:generate:{b}" for b in args.gen_batches.split(",")]
            elif c in ("train-lora", "train-lora-all", "train-lora-sv", "train-full"):
                specs.append(f"{s}:{c}")
            else:
                sys.exit(f"unknown case {c!r}")
    passthrough = []
    for k in ["device", "dtype", "prompt_tokens", "new_tokens", "train_batch", "seq_len", "steps",
              "warmup_steps", "threads", "attn"]:
        passthrough += ["--" + k.replace("_", "-"), str(getattr(args, k))]
    results = []
    for i, spec in enumerate(specs):
        print(f"[{i + 1}/{len(specs)}] {spec} on torch/{args.device} {args.dtype}", file=sys.stderr, flush=True)
        shape, case, *rest = spec.split(":")
        base = dict(shape=shape, case=case, batch=int(rest[0]) if rest else args.train_batch, tokens_per_s=0.0,
                    warmup_seconds=0.0, seconds=0.0, params=0, trainable_params=0, model_tflops=None,
                    peak_host_mib=None, peak_gpu_mib=None)
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", spec] + passthrough,
                                  stdout=subprocess.PIPE, text=True, timeout=args.case_timeout)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("SECVEC_CASE ")), None)
            if proc.returncode != 0 or line is None:
                base["error"] = f"failed (exit {proc.returncode})"
                results.append(base)
            else:
                results.append(json.loads(line[len("SECVEC_CASE "):]))
        except subprocess.TimeoutExpired:
            base["error"] = f"timed out after {args.case_timeout} s"
            results.append(base)
        r = results[-1]
        print(f"    {r['tokens_per_s']:.1f} tokens/s, warm-up {r['warmup_seconds']:.1f}s"
              + (f" — {r['error']}" if r.get("error") else ""), file=sys.stderr, flush=True)

    report = dict(
        tool=f"torch {torch.__version__} + transformers {transformers.__version__} + peft {peft.__version__}",
        backend=f"torch-{args.device}", dtype=args.dtype, device=device_name(args),
        command="python3 " + " ".join(sys.argv), results=results)
    out = args.out or f"results/benchmarks/reference-torch-{args.device}-{args.dtype}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
