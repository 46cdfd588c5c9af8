"""Fixed per-head mixes (with and without dense warm-up steps) at the CPU demo size: PSNR/SSIM vs dense.

Measures what `sparsevdit demo --fixed-mix` and simple variants of it give, for bench/results/demo-cpu.json.
"""
import torch, time, json
import sparsevdit.patterns as P
from sparsevdit.models.weights import load_weights
from sparsevdit.models.vdit import SamplerConfig, sample
from sparsevdit.demo import fixed_sparse_mix, default_settings
from sparsevdit.metrics import video_psnr_ssim
torch.set_num_threads(2)
s = default_settings("cpu")
model = load_weights(None, device="cpu", dtype=torch.float32)
layout = model.cfg.layout(s.frames, s.height, s.width)
classes = torch.tensor(s.classes)
sampler = SamplerConfig(steps=s.steps, guidance=s.guidance)
run = lambda on_step: sample(model, classes, frames=s.frames, height=s.height, width=s.width, seeds=list(s.seeds), sampler=sampler, on_step=on_step)
model.clear_patterns(); dense = run(None)
f, n, b = layout.tokens_per_frame, layout.video_tokens, s.block_size
def mix(dw, mw, sw):
    diag = P.build("diagonal", layout, block_size=b, width=dw * f)
    multi = P.build("multi_diagonal", layout, block_size=b, width=max(b, int(n * mw)))
    stripes = P.build("union", layout, block_size=b, patterns=[{"name": "diagonal", "params": {"width": sw * f}}, {"name": "vertical_stripe", "params": {"sink_frames": 1}}])
    cyc = [diag, multi, stripes]
    return [[cyc[(h + l) % 3] for h in range(model.cfg.heads)] for l in range(model.cfg.depth)]
variants = {"current": (fixed_sparse_mix(model, layout, b), 0), "current+warm4": (fixed_sparse_mix(model, layout, b), 4),
            "wide+warm4": (mix(5, 1/3, 3), 4), "current+warm6": (fixed_sparse_mix(model, layout, b), 6)}
for name, (m, warm) in variants.items():
    def on_step(step, m=m, warm=warm):
        if step < warm: model.clear_patterns()
        else: model.set_patterns(m, backend="auto")
    t = time.time(); sp = run(on_step); model.clear_patterns()
    dens = sum(p.density for l in m for p in l) / sum(len(l) for l in m)
    eff = (warm + (s.steps - warm) * dens) / s.steps
    print(name, f"density {dens:.3f} effective {eff:.3f}", [video_psnr_ssim(sp[i], dense[i]) for i in range(2)], f"{time.time()-t:.0f}s", flush=True)
