"""bench/rehearsal.py's hooks into the processes it starts (this folder is on their PYTHONPATH);
latentfss itself has no such choice.

$LATENTFSS_STANDIN=1: every `Encoder(arch)` is `StandIn(arch)`, the dilated ResNet's layer3
output (its channels at stride 8) from a fixed random projection of 8 x 8 pixel means, so that
a rehearsal's data path is real and its encoder cheap.

$LATENTFSS_DEVICE_WORK=DIR: a `latentfss STAGE` process counts every torch operation its main
thread runs (`DeviceWork`: what docs/running.md, "What a full run costs", calls the device's
work) and writes DIR/STAGE.json at exit, with the seconds it spent on itself outside them."""

import os
import sys

if os.environ.get("LATENTFSS_STANDIN") == "1":
    import torch
    import torch.nn.functional as F
    from torch import nn

    import latentfss.encoder

    class StandIn(nn.Module):
        def __init__(self, arch: str) -> None:
            super().__init__()
            self.arch = arch
            self.channels = 256 * latentfss.encoder.DEPTHS[arch][0].expansion
            generator = torch.Generator().manual_seed(0)
            self.project = nn.Conv2d(3, self.channels, 1)
            with torch.no_grad():
                self.project.weight.copy_(torch.randn(self.channels, 3, 1, 1, generator=generator))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            pooled = F.avg_pool2d(images, 8, ceil_mode=True, count_include_pad=False)
            return torch.tanh(self.project(pooled))

    latentfss.encoder.Encoder = StandIn

STAGE = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
if os.environ.get("LATENTFSS_DEVICE_WORK") and sys.argv[0].endswith("latentfss") and STAGE:
    import atexit
    import json
    import time
    import timeit
    from pathlib import Path

    import torch  # as the stage does

    OWN = time.perf_counter()  # its own seconds, not the stage's: set-up from here, calibration
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import flop_registry

    COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key

    class DeviceWork(TorchDispatchMode):
        """Sums every operation's seconds, FLOPs and bytes, and the seconds spent in here,
        counting included."""

        def __init__(self) -> None:
            super().__init__()
            self.pid, self.depth = os.getpid(), 0
            self.work = dict.fromkeys(("ops", "seconds", "flops", "bytes", "calls", "inside_s"), 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            entered, self.depth = time.perf_counter(), self.depth + 1
            self.work["calls"] += 1
            try:
                return self.count(func, args, kwargs or {})
            finally:
                self.depth -= 1
                if not self.depth:
                    self.work["inside_s"] += time.perf_counter() - entered

        def count(self, func, args, kwargs):
            flops = flop_registry.get(func.overloadpacket)
            if flops is None and has_kernel(func.name(), COMPOSITE):
                with self:  # e.g. conv2d in inference mode: its ATen parts (a convolution), as
                    # FlopCounterMode counts them; not a Python decomposition's slower ones
                    return func._op_dk(COMPOSITE, *args, **kwargs)
            start = time.perf_counter()
            out = func(*args, **kwargs)
            self.work["ops"] += 1
            self.work["seconds"] += time.perf_counter() - start
            if flops is not None:
                self.work["flops"] += flops(*args, **kwargs, out_val=out)
            if not func.is_view:
                tensors = [t for t in tree_leaves((args, kwargs, out)) if torch.is_tensor(t)]
                self.work["bytes"] += sum(t.nelement() * t.element_size() for t in tensors)
            return out

    def dispatch_cost(calls: int = 2000) -> float:
        """Seconds a call spends reaching the mode and back, outside `inside_s`: a small
        operation timed with the mode, less its time inside, against the same without."""
        x, before = torch.zeros(1), dict(MODE.work)
        with_mode = timeit.timeit(lambda: torch.add(x, x), number=calls)
        inside, op = (MODE.work[k] - before[k] for k in ("inside_s", "seconds"))
        with _disable_current_modes():
            bare = timeit.timeit(lambda: torch.add(x, x), number=calls)
        return max(with_mode - inside - (bare - op), 0) / calls

    MODE = DeviceWork()
    MODE.__enter__()
    torch.zeros(1).add_(1)  # the first operation in a dispatch mode imports torch._dynamo (1.4 s)
    MODE.work, OWN = dict.fromkeys(MODE.work, 0), time.perf_counter() - OWN
    os.register_at_fork(after_in_child=lambda: MODE.__exit__(None, None, None))  # workers

    @atexit.register
    def _write() -> None:
        if os.getpid() == MODE.pid:
            work, calibrating = dict(MODE.work), time.perf_counter()  # before its calls
            work["dispatch_s"] = work["calls"] * dispatch_cost()
            work["own_s"] = OWN + time.perf_counter() - calibrating
            folder = Path(os.environ["LATENTFSS_DEVICE_WORK"])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{STAGE}.json").write_text(json.dumps(work))
