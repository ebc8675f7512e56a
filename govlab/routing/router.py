"""The router: exact per-sample gradient routing in one backward pass.

``Router.install`` replaces the forward of every module that owns parameters by a masked version:
the forward value is unchanged, the input gradient is the ordinary one, and the parameter gradient
is taken over the samples whose allowed bands include the module's band (``ops``). A module with
no masked op (``MultiheadAttention``, a module owning a bare ``nn.Parameter``) is routed as one unit:
when its input carries no gradient (a caption encoder reading token ids), in one pass with the other
samples' rows detached at its output; otherwise by batch splitting, allowed samples running with its
parameters and the others with detached copies.
Per step, ``route`` sets a 0/1 table (samples x bands); with no table set, or with gradients off,
every module runs its own forward.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from govlab import distributed
from govlab.errors import GovlabError
from govlab.routing import ops
from govlab.routing.bands import TRUNK
from govlab.routing.policy import RoutingPolicy
from govlab.routing.slots import SLOTS_ATTR, SlotBank, banks


def per_output(m: nn.Module, fn, *outs):
    """``fn`` over a unit's outputs (a tensor, or a tuple of tensors and Nones, as
    ``nn.MultiheadAttention`` returns), element by element."""
    if isinstance(outs[0], torch.Tensor):
        return fn(*outs)
    if isinstance(outs[0], tuple) and all(isinstance(o, torch.Tensor) or o is None for o in outs[0]):
        return tuple(None if parts[0] is None else fn(*parts) for parts in zip(*outs))
    raise GovlabError(f"routing: cannot route {type(m).__name__} as one unit: its output is neither a "
                      "tensor nor a tuple of tensors")


class Router:
    """Routes each sample's gradient to the bands its categories allow."""

    def __init__(self, model: nn.Module, band_of: dict[str, str], policy: RoutingPolicy,
                 slot_sources=()):
        self.model, self.policy, self.slot_sources = model, policy, frozenset(slot_sources)
        self.band_of = dict(band_of)
        names = dict(model.named_parameters())
        missing = set(names) - set(self.band_of)
        if missing:
            raise GovlabError(f"routing: parameters with no band: {sorted(missing)[:3]}")
        self.bands = sorted(set(self.band_of.values()) | {TRUNK})
        self.index = {b: i for i, b in enumerate(self.bands)}
        self.params_of = {b: [names[n] for n, bb in self.band_of.items() if bb == b] for b in self.bands}
        self.units = self._units()
        self._bank_bands = {id(bk): torch.tensor([self.index[b] for _, _, b in bk.slots]) for bk in banks(model)}
        self._installed, self._bypass = [], False
        self._key_cache: dict = {}
        self.clear()

    # -- which module routes which parameters -----------------------------------------------------
    def _units(self) -> list[tuple[str, nn.Module, object, int]]:
        """(name, module, masked op or None for batch splitting, band index) covering every parameter
        outside slot banks exactly once."""
        modules = dict(self.model.named_modules())
        owners = {}
        for name, m in modules.items():
            if isinstance(m, SlotBank) or name == SLOTS_ATTR or name.startswith(SLOTS_ATTR + "."):
                continue
            direct = [f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)]
            if direct:
                owners[name] = direct

        def subtree_bands(name):
            prefix = f"{name}." if name else ""
            return {b for n, b in self.band_of.items() if n.startswith(prefix) and not n.startswith(SLOTS_ATTR + ".")}

        split, leaves = set(), {}
        for name, direct in owners.items():
            m = modules[name]
            fn = ops.masked_forward(m)
            if fn is not None:
                bands = {self.band_of[p] for p in direct}
                if len(bands) > 1:
                    raise GovlabError(f"routing: the parameters of {name!r} fall in bands {sorted(bands)}; "
                                      "a band must hold whole layers")
                leaves[name] = (fn, bands.pop())
                continue
            unit = name  # smallest enclosing module whose parameters share one band
            while len(subtree_bands(unit)) > 1:
                if not unit:
                    raise GovlabError(f"routing: cannot route {name!r} ({type(m).__name__}): its parameters "
                                      "are used outside a routable layer and no enclosing module is in one band")
                unit = unit.rpartition(".")[0]
            split.add(unit)

        def covered(name):
            return any(name == u or name.startswith(u + ".") or u == "" for u in split)

        outer_split = {u for u in split if not any(v != u and (v == "" or u.startswith(v + ".")) for v in split)}
        units = [(u, modules[u], None, self.index[subtree_bands(u).pop()]) for u in sorted(outer_split)]
        units += [(n, modules[n], fn, self.index[b]) for n, (fn, b) in leaves.items() if not covered(n)]
        return units

    # -- install / remove -------------------------------------------------------------------------
    def install(self) -> "Router":
        if self._installed:
            return self
        for name, m, fn, b in self.units:
            orig = m.forward
            m.forward = self._leaf_forward(m, fn, b, orig) if fn else self._split_forward(m, b, orig)
            self._installed.append(m)
        for bank in banks(self.model):
            bank.router = self
        return self

    def remove(self) -> None:
        for m in self._installed:
            del m.forward
        self._installed = []
        for bank in banks(self.model):
            bank.router = None

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.remove()

    def _active(self, x) -> bool:
        if self._table is None or self._bypass or not torch.is_grad_enabled():
            return False
        if x.shape[0] != self._b:
            raise RuntimeError(f"routing: a routed module saw batch {x.shape[0]}, routed batch is {self._b}")
        return True

    def _leaf_forward(self, m, fn, b, orig):
        static = ops.static_args(m)

        def forward(x, *rest, **kw):
            if self._table is None or rest or kw or self._bypass or not torch.is_grad_enabled():
                return orig(x, *rest, **kw)
            n = self._count[b]
            if n == self._b:
                return orig(x)
            if x.shape[0] != self._b:
                raise RuntimeError(f"routing: a routed module saw batch {x.shape[0]}, routed batch is {self._b}")
            return fn(m, x, self._sel[b], n > 0, static)
        return forward

    def _split_forward(self, m, b, orig):
        params = dict(m.named_parameters())

        def detached(*args, **kw):
            with self.bypassed():
                return torch.func.functional_call(m, {k: p.detach() for k, p in params.items()}, args, kw,
                                                  strict=True, tie_weights=False)

        def forward(*args, **kw):
            lead = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if self._bypass or lead is None or not self._active(lead):
                return orig(*args, **kw)
            n = self._count[b]
            if n == self._b:
                return orig(*args, **kw)
            if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in (*args, *kw.values())):
                # nothing upstream of the unit may take a gradient: one pass, and the rows that may
                # not change its parameters leave the graph at its output
                return self._keep_rows(orig(*args, **kw), b, m)
            if n == 0:
                return detached(*args, **kw)
            sel = self._sel[b]
            if isinstance(sel, slice) and (sel.start == 0 or sel.stop == self._b):
                a, d = sel, (slice(sel.stop, None) if sel.start == 0 else slice(0, sel.start))
                order = None
            else:
                keep = self._cols[b] > 0
                a, d = keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
                order = torch.argsort(torch.cat([a, d]))

            def part(idx):
                return ([t[idx] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == self._b else t
                         for t in args],
                        {k: t[idx] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == self._b else t
                         for k, t in kw.items()})
            (aa, ak), (da, dk) = part(a), part(d)
            out_a, out_d = orig(*aa, **ak), detached(*da, **dk)
            if order is not None:
                return per_output(m, lambda u, v: torch.cat([u, v])[order], out_a, out_d)
            in_order = [out_a, out_d] if a.start == 0 else [out_d, out_a]
            return per_output(m, lambda u, v: torch.cat([u, v]), *in_order)
        return forward

    def _keep_rows(self, out, b: int, m: nn.Module):
        """``out`` with the rows that may not change band ``b`` detached."""
        if self._count[b] == 0:
            return per_output(m, torch.Tensor.detach, out)
        keep = self._cols[b] > 0
        return per_output(m, lambda o: torch.where(ops.bcast(keep, o, 0), o, o.detach()), out)

    # -- per step -----------------------------------------------------------------------------------
    def allowed(self, categories, source: str) -> frozenset[str]:
        key = (tuple(categories), source)
        if key not in self._key_cache:
            self._key_cache[key] = self.policy.allowed(categories, source, self.slot_sources)
        return self._key_cache[key]

    def table(self, records: list[dict]) -> torch.Tensor:
        """0/1 (samples x bands): may sample i change band j."""
        t = torch.zeros(len(records), len(self.bands), dtype=torch.bool)
        for i, r in enumerate(records):
            for b in self.allowed(r["categories"], r["source_id"]):
                if b in self.index:
                    t[i, self.index[b]] = True
        return t

    def route(self, records: list[dict] | None = None, *, table: torch.Tensor | None = None,
              counts: list[int] | None = None) -> None:
        """Set the routing of the next forward/backward: from records, or rows of a ``table``.
        Under several ranks (``govlab.distributed``) the table holds this rank's slice of the batch,
        and the per-band counts of the whole batch (``counts``, else summed across the ranks: a
        collective call) decide the idle bands and ``band_counts``, so that every rank's optimizer
        moves the same parameters."""
        t = self.table(records) if table is None else table
        first = next(self.model.parameters())
        self._table = t
        self._b = t.shape[0]
        self._count = t.sum(0).tolist()
        if counts is None and distributed.world().active:
            counts = distributed.all_reduce_sum(t.sum(0).to(torch.int64)).tolist()
        self._global = list(counts) if counts is not None else self._count
        self._cols = t.t().to(first.device, first.dtype).contiguous()
        self._sel = []  # per band: None (all or none), a slice (contiguous samples) or a 0/1 mask
        for j, n in enumerate(self._count):
            sel = None
            if 0 < n < self._b:
                idx = t[:, j].nonzero().squeeze(1)
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                sel = slice(lo, hi) if hi - lo == n else self._cols[j]
            self._sel.append(sel)

    def order(self, records: list[dict]) -> torch.Tensor:
        """A permutation of a batch that makes each band's samples contiguous where the policy allows
        (sequestered groups last); routing a batch in this order takes the fast path."""
        return torch.argsort(self.group_rank(self.table(records)), stable=True)

    def group_rank(self, table: torch.Tensor) -> torch.Tensor:
        """Sort key of each row of a routing table: samples that reach the trunk first, then by band set."""
        trunk = self.index[TRUNK]
        keys = [(not bool(row[trunk]), tuple(row.tolist())[::-1]) for row in table]
        ranks = {k: i for i, k in enumerate(sorted(set(keys), reverse=False))}
        return torch.tensor([ranks[k] for k in keys])

    def clear(self) -> None:
        self._table, self._b, self._count, self._cols, self._sel = None, 0, None, None, None
        self._global = None

    @property
    def active(self) -> bool:
        return self._table is not None

    def bank_masks(self, bank: SlotBank, x: torch.Tensor):
        """(column mask or None, live flag per slot) of one slot bank, or None when not routing."""
        if not self._active(x):
            return None
        idx = self._bank_bands[id(bank)]
        counts = [self._count[i] for i in idx.tolist()]
        live = [c > 0 for c in counts]
        if all(c == self._b for c in counts):
            return None, live
        return self._cols[idx][bank.col_slot].t().contiguous(), live

    def band_rows(self, band: str) -> tuple[int, torch.Tensor | None]:
        """How many samples of the routed batch may change ``band``, and which (a 0/1 row mask, or
        None when all may)."""
        j = self.index[band]
        n = self._count[j]
        return n, (None if n == self._b else self._cols[j])

    @contextlib.contextmanager
    def bypassed(self):
        """Every module runs its own forward inside (e.g. to recompute one sample of a routed batch)."""
        previous, self._bypass = self._bypass, True
        try:
            yield
        finally:
            self._bypass = previous

    def idle_parameters(self) -> list[torch.Tensor]:
        """Parameters of bands no sample of the routed batch may change."""
        if self._count is None:
            return []
        return [p for b in self.bands if self._global[self.index[b]] == 0 for p in self.params_of[b]]

    def band_counts(self) -> dict[str, int]:
        return {b: int(self._global[i]) for b, i in self.index.items()} if self._count else {}
