"""Streaming Pearson correlation between every neuron and every dictionary feature of a layer.

Running sums (n, sum x, sum y, sum x^2, sum y^2, sum xy) are all it takes, and shards merge by
adding them. The cross sums are an [n_x, n_y] table of sums, never a table of correlations:
callers keep only each unit's top few (``top_k``).

Two ways in:

* ``update(x, y)``: float64 throughout, for small inputs and the tests;
* ``update_sparse(x, y, valid)``: the harvest's path. y (SAE latents) is mostly zero, so the cross
  sums come from its non-zeros only (T * L0 * n_x multiply-adds, not T * n_y * n_x), in float32
  around a fixed shift of x (the first batch's mean: sums of x - shift are small, so float32
  loses nothing that matters), gathered in a float32 table for up to ``FOLD_TOKENS`` tokens and
  then folded into float64.

Both keep the sums of ``x - shift``; ``sums()`` gives the plain float64 sums, and states from
either path and any shift merge through them.
"""

from __future__ import annotations

import warnings

import torch

FOLD_TOKENS = 16_384
"""Tokens whose float32 cross sums are gathered before they are folded into float64."""
_FIELDS = ("sx", "sy", "sxx", "syy", "sxy")


class CorrelationAccumulator:
    """Pearson r between every x (neuron) and every y (feature), from running sums."""

    def __init__(self, n_x: int, n_y: int, device: torch.device | str = "cpu") -> None:
        dev = torch.device(device)
        self.n_x, self.n_y = n_x, n_y
        self.n = 0
        self.shift: torch.Tensor | None = None
        """[n_x] float64: the x sums below are of x - shift (set by the first update)."""
        self.sx = torch.zeros(n_x, dtype=torch.float64, device=dev)
        self.sxx = torch.zeros(n_x, dtype=torch.float64, device=dev)
        self.sy = torch.zeros(n_y, dtype=torch.float64, device=dev)
        self.syy = torch.zeros(n_y, dtype=torch.float64, device=dev)
        self.syx = torch.zeros(n_y, n_x, dtype=torch.float64, device=dev)
        """Cross sums, transposed ([n_y, n_x]): the sparse product's natural layout."""
        self._buffer: torch.Tensor | None = None
        self._buffered = 0

    # ---- updates -----------------------------------------------------------------------------
    def _shifted(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if self.shift is None:
            rows = x if valid is None else x[valid]
            mean = rows.double().mean(0) if rows.shape[0] else torch.zeros(self.n_x, dtype=torch.float64)
            self.shift = mean.to(self.sx.device)
        return self.shift

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add T rows: x [T, n_x], y [T, n_y] (same tokens), in float64."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y need the same rows (got {x.shape[0]} and {y.shape[0]})")
        self._check(x, y)
        d = x.to(torch.float64) - self._shifted(x, None)
        y = y.to(torch.float64)
        self.n += x.shape[0]
        self.sx += d.sum(0)
        self.sxx += (d * d).sum(0)
        self.sy += y.sum(0)
        self.syy += (y * y).sum(0)
        self.syx += _sparse_t(y) @ d if _is_sparse(y) else y.T @ d

    def update_sparse(self, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        """Add the ``valid`` rows of x [T, n_x] (dense) and y [T, n_y] (mostly zero)."""
        if not (x.shape[0] == y.shape[0] == valid.shape[0]):
            raise ValueError(f"x, y and valid need the same rows (got {x.shape[0]}, {y.shape[0]}, {valid.shape[0]})")
        self._check(x, y)
        shift = self._shifted(x, valid).to(torch.float32)
        mask = valid.to(torch.float32)[:, None]
        d = torch.sub(x.float(), shift).mul_(mask)  # [T, n_x]: x - shift on valid rows, 0 elsewhere
        self.n += int(valid.sum())
        self.sx += d.sum(0).double()
        self.sxx += torch.linalg.vector_norm(d, dim=0).double().square()
        rows, cols = y.nonzero(as_tuple=True)
        keep = valid[rows]
        rows, cols = rows[keep], cols[keep]
        values = y[rows, cols].float()
        self.sy.index_add_(0, cols, values.double())
        self.syy.index_add_(0, cols, values.double().square())
        with warnings.catch_warnings():  # "sparse support is in beta": the product is plain arithmetic
            warnings.simplefilter("ignore", UserWarning)
            m = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, (self.n_y, x.shape[0]))
            product = torch.sparse.mm(m, d)  # [n_y, n_x]
        if self._buffer is None:
            self._buffer = product
        else:
            self._buffer += product
        self._buffered += x.shape[0]
        if self._buffered >= FOLD_TOKENS:
            self._fold()

    def _fold(self) -> None:
        if self._buffer is not None:
            self.syx += self._buffer
            self._buffer, self._buffered = None, 0

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[1] != self.n_x or y.shape[1] != self.n_y:
            raise ValueError(f"expected {self.n_x} x and {self.n_y} y columns (got {x.shape[1]} and {y.shape[1]})")

    # ---- states ------------------------------------------------------------------------------
    def sums(self) -> dict[str, torch.Tensor]:
        """The plain float64 sums (of x, not x - shift) on the CPU."""
        self._fold()
        a = self.shift if self.shift is not None else torch.zeros_like(self.sx)
        n = float(self.n)
        return {
            "n": torch.tensor([self.n], dtype=torch.int64),
            "sx": (self.sx + n * a).cpu(),
            "sxx": (self.sxx + 2 * a * self.sx + n * a * a).cpu(),
            "sy": self.sy.cpu(),
            "syy": self.syy.cpu(),
            "sxy": (self.syx + torch.outer(self.sy, a)).T.contiguous().cpu(),
        }

    def state(self) -> dict[str, torch.Tensor]:
        """The sums to store (a shard's partial): the shift and the sums of x - shift, the cross
        sums in float32 (they are sums of centred values, so float32 keeps what the float32
        products computed; half the bytes of the largest table)."""
        self._fold()
        shift = self.shift if self.shift is not None else torch.zeros_like(self.sx)
        return {"n": torch.tensor([self.n], dtype=torch.int64), "shift": shift.cpu(), "sx": self.sx.cpu(),
                "sxx": self.sxx.cpu(), "sy": self.sy.cpu(), "syy": self.syy.cpu(),
                "sxy": self.syx.T.float().contiguous().cpu()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> CorrelationAccumulator:
        """From ``state()`` or ``sums()`` (no shift: plain sums)."""
        acc = cls(len(state["sx"]), len(state["sy"]))
        acc.n = int(state["n"][0])
        acc.shift = state["shift"].to(torch.float64) if "shift" in state else torch.zeros(acc.n_x, dtype=torch.float64)
        for name in ("sx", "sxx", "sy", "syy"):
            setattr(acc, name, state[name].to(torch.float64).clone())
        acc.syx = state["sxy"].to(torch.float64).T.contiguous()
        return acc

    def merge(self, other: CorrelationAccumulator) -> None:
        """Add another shard's sums to these: added as plain float64 sums, then centred again on
        this accumulator's shift (so ``state()`` stays small, centred values)."""
        if (self.n_x, self.n_y) != (other.n_x, other.n_y):
            raise ValueError(f"cannot merge {other.n_x}x{other.n_y} sums into {self.n_x}x{self.n_y}")
        mine, theirs = self.sums(), other.sums()
        n = int(mine["n"][0] + theirs["n"][0])
        sx, sxx = mine["sx"] + theirs["sx"], mine["sxx"] + theirs["sxx"]
        sy, syy = mine["sy"] + theirs["sy"], mine["syy"] + theirs["syy"]
        syx = (mine["sxy"] + theirs["sxy"]).T.contiguous()
        a = (self.shift if self.shift is not None else other.shift if other.shift is not None
             else torch.zeros(self.n_x, dtype=torch.float64)).cpu()
        self.n, self.shift = n, a
        self.sx, self.sxx = sx - n * a, sxx - 2 * a * sx + n * a * a
        self.sy, self.syy = sy, syy
        self.syx = syx - torch.outer(sy, a)
        self._buffer, self._buffered = None, 0

    # ---- results -----------------------------------------------------------------------------
    def correlation(self) -> torch.Tensor:
        """[n_x, n_y] Pearson r; 0 where x or y is constant (or no rows were seen)."""
        s = self.sums()
        n = max(self.n, 1)
        sx, sy, sxx, syy = s["sx"], s["sy"], s["sxx"], s["syy"]
        cov = s["sxy"] - torch.outer(sx, sy) / n
        var_x = (sxx - sx**2 / n).clamp_min(0.0)
        var_y = (syy - sy**2 / n).clamp_min(0.0)
        denom = torch.outer(var_x, var_y).sqrt()
        # A relative floor: a variance that is float64 rounding of a constant must count as zero.
        ok = (var_x > 1e-12 * sxx.clamp_min(1e-300))[:, None] & (var_y > 1e-12 * syy.clamp_min(1e-300))[None, :]
        return torch.where(ok, cov / denom.clamp_min(1e-300), torch.zeros((), dtype=torch.float64)).clamp(-1.0, 1.0)

    def transposed(self) -> CorrelationAccumulator:
        """The same sums with x and y swapped (features' rows, neurons' columns)."""
        s = self.sums()
        return self.from_state({"n": s["n"], "sx": s["sy"], "sy": s["sx"], "sxx": s["syy"], "syy": s["sxx"],
                                "sxy": s["sxy"].T})

    def top_k(self, k: int, *, by_abs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's k most correlated columns: (r [n_x, k], column indices [n_x, k]).

        Ordered by r (or |r| with ``by_abs``), highest first; ties go to the lower index.
        """
        r = self.correlation()
        key = r.abs() if by_abs else r
        k = min(k, r.shape[1])
        # A stable descending sort gives lower indices first on ties; topk does not promise that.
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
        return r.gather(1, order), order


SPARSE_BELOW = 0.05
"""Below this share of non-zero entries, ``update`` multiplies from y's non-zeros only."""


def _is_sparse(y: torch.Tensor) -> bool:
    return bool(y.numel()) and int(torch.count_nonzero(y)) < SPARSE_BELOW * y.numel()


def _sparse_t(y: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is exact
        warnings.simplefilter("ignore", UserWarning)
        return y.T.contiguous().to_sparse_csr()  # [n_y, T]
