"""AUTO's search: the smallest configuration within the budget, then the fastest of that size.

A configuration's *score* is what the budget bounds: by default ``|ΔsoftAUC| + margin_sigmas * SE``,
the expected AUC change with the FP32 probabilities as labels, on every unlabelled row AUTO has
(labelled tuning rows only veto, on evidence); with ``harm='auc'`` ``|ΔAUC| + margin_sigmas * SE``
on the labelled tuning rows (or p99 ``|Δp|`` without labels; :class:`lpo.tune.evaluate.Metric`).
To rank forms the search uses a smooth, roughly additive harm: the mean squared change of the
predictions against FP32 (``mse``).

1. **Start** with every node at its smallest form; done if it holds the budget.
2. **Sensitivity**, one node at a time: each form of each node, every other node FP32;
   its ``mse`` is that form's harm.
3. **Path**: from the start, repeatedly move the one node to the larger form that removes
   the most harm per byte added (marginal analysis, as in mixed-precision bit allocation),
   until every node is FP32. Configurations along it grow in size and shrink in harm.
4. **Bisect** the path for the smallest configuration that holds the budget (its score is
   measured, not predicted); all-FP32 at the end holds it by definition.
5. **Tighten**: try each node of the result one form smaller (biggest saving first) and
   keep the change when the budget still holds.
6. **Speed** (real builds): the choice is built and timed; same-size forms that may be
   faster (:data:`lpo.options.AUTO_FASTER`) are tried, all together and then one node at a
   time, and kept when they hold the budget and measure ``min_speedup`` faster, A/B.

Steps 1-5 score weight-only forms by exact simulation (:mod:`lpo.tune.simulate`). Every step
is deterministic (ties go to fewer bytes, then the node name), so one seed gives one result.
Every evaluation counts against ``max_evals``/``time_budget_s``; when they run out the
smallest configuration found within the budget so far is used (nodes whose sensitivity was
not measured are treated as harmful).
"""
from __future__ import annotations

import logging

from lpo import options as opts
from lpo.errors import LpoError

log = logging.getLogger(__name__)


def _smallest(spaces) -> dict:
    return {s.name: s.forms[0].choice for s in spaces}


def _with(config: dict, node: str, choice: str) -> dict:
    c = dict(config)
    c[node] = choice
    return c


class Search:
    """Runs the search over ``evaluator``'s spaces; ``best`` is the result (or None)."""

    def __init__(self, evaluator, spaces, auto: opts.AutoOptions):
        self.ev, self.auto = evaluator, auto
        self.spaces = {s.name: s for s in spaces}
        self.movable = [s.name for s in spaces if s.top > 0]
        self.stopped: str | None = None
        self.sensitivity: dict = {}

    # ---- helpers
    def _left(self) -> bool:
        if not self.ev.budget.left():
            self.stopped = self.stopped or self.ev.budget.why()
            return False
        return True

    def _level(self, config, node) -> int:
        return [f.choice for f in self.spaces[node].forms].index(config[node])

    def _feasible_best(self):
        """The smallest feasible, non-FP32 trial so far (ties: faster, then earlier)."""
        ok = [t for t in self.ev.trials if t.feasible and any(c != opts.KEEP for c in t.config.values())]
        if not ok:
            return None
        return min(ok, key=lambda t: (t.nbytes, t.latency_ratio if t.latency_ratio is not None else 1.0, t.id))

    def next_safer(self, trial, exclude=()):
        """The smallest trial within the budget whose harm (``mse``) is at most half of ``trial``'s.

        A clearly safer configuration, not a re-roll of a nearly equal one (not all-FP32;
        ``exclude``: config keys).
        """
        limit = (trial.mse if trial.mse is not None else trial.score) / 2.0
        ok = [t for t in self.ev.trials if t.feasible and (t.mse if t.mse is not None else t.score) <= limit
              and self.ev.key(t.config) not in exclude and any(c != opts.KEEP for c in t.config.values())]
        return min(ok, key=lambda t: (t.nbytes, t.id), default=None)

    # ---- phases
    def run(self):
        """Run every phase; return the chosen trial, or None when no configuration holds the budget."""
        cur = self.ev.evaluate(_smallest(self.spaces.values()), "start", "every node at its smallest form")
        if not cur.feasible and self.movable:
            harm = self._sensitivity()
            cur = self._bisect(self._path(harm))
        if cur is not None and cur.feasible:
            cur = self._tighten(cur)
        best = self._feasible_best()
        if best is None:
            return None
        return self._speed(best)

    def _sensitivity(self) -> dict:
        """``{node: [harm of each form]}`` measured one node at a time (FP32: 0).

        First every node's smallest form (largest nodes first), then the other forms. A form
        left unmeasured when the budget runs out is estimated from its node's measured harm,
        scaled by the forms' weight errors (inf when nothing of the node was measured).
        """
        base = {n: s.forms[-1].choice for n, s in self.spaces.items()}
        order = sorted(self.movable, key=lambda n: (-self.spaces[n].fp32_bytes, n))
        harm = {n: [None] * (len(self.spaces[n].forms) - 1) + [0.0] for n in order}
        for r0 in (0, None):  # pass 1: each node's smallest form; pass 2: the rest
            for n in order:
                forms = self.spaces[n].forms
                for r in ([0] if r0 == 0 else range(1, len(forms) - 1)):
                    if not self._left():
                        break
                    t = self.ev.evaluate(_with(base, n, forms[r].choice), "sensitivity",
                                         f"only {n} -> {forms[r].choice}")
                    harm[n][r] = t.mse if t.mse is not None else t.score
        for n in order:
            forms = self.spaces[n].forms
            known = [(h, forms[r].weight_error) for r, h in enumerate(harm[n][:-1]) if h is not None]
            for r, h in enumerate(harm[n]):
                if h is None:
                    werr = forms[r].weight_error
                    ratios = [kh / kw for kh, kw in known if kw]
                    harm[n][r] = (max(ratios) * werr) if ratios and werr is not None else float("inf")
        self.sensitivity = {n: h[0] for n, h in harm.items()}
        return harm

    def _path(self, harm) -> list[dict]:
        """Configurations from the smallest to all-FP32, each step the best harm removed per byte."""
        level = {n: 0 for n in self.spaces}
        path = [{n: self.spaces[n].forms[0].choice for n in self.spaces}]
        while True:
            best = None
            for n in self.movable:
                forms, cur = self.spaces[n].forms, level[n]
                for r in range(cur + 1, len(forms)):
                    dh = harm[n][cur] - harm[n][r]
                    if dh != dh:  # inf - inf: both unmeasured
                        dh = 0.0
                    db = forms[r].nbytes - forms[cur].nbytes
                    key = (-(dh / db) if db > 0 else -float("inf"), db, n, r)
                    if best is None or key < best[0]:
                        best = (key, n, r)
            if best is None:
                return path
            _k, n, r = best
            level[n] = r
            path.append(_with(path[-1], n, self.spaces[n].forms[r].choice))

    def _bisect(self, path):
        """The first configuration on ``path`` that holds the budget (by bisection), or None."""
        lo, hi = 0, len(path) - 1  # path[0] is known to miss the budget
        if not self._left():
            return None
        last = self.ev.evaluate(path[hi], "path", "every node at its largest form")
        if not last.feasible:
            return None
        best = last
        while hi - lo > 1 and self._left():
            mid = (lo + hi) // 2
            t = self.ev.evaluate(path[mid], "path", f"path step {mid}/{len(path) - 1}")
            if t.feasible:
                hi, best = mid, t
            else:
                lo = mid
        return best

    def _tighten(self, cur):
        def saving(n):
            level = self._level(cur.config, n)
            forms = self.spaces[n].forms
            return forms[level].nbytes - forms[level - 1].nbytes

        for n in sorted((n for n in self.movable if self._level(cur.config, n) > 0), key=lambda n: (-saving(n), n)):
            if not self._left():
                break
            level = self._level(cur.config, n)
            if level == 0:
                continue
            choice = self.spaces[n].forms[level - 1].choice
            t = self.ev.evaluate(_with(cur.config, n, choice), "tighten", f"{n} -> {choice}")
            if t.feasible:
                cur = t
        return cur

    def _speed(self, best):
        """Build ``best`` and try same-size faster forms on real builds."""
        if self.auto.max_builds <= 0 or not self._left():
            return best
        base, _ = self.ev.build(best.config, "speed", "chosen size, timed")
        if not base.feasible:
            log.warning("AUTO: the built model misses the budget its simulation met (%.3g vs %.3g); keeping the "
                        "simulated choice's form and reporting the built numbers", base.score, best.score)
        alts = [(n, self.spaces[n].faster[best.config[n]][0].choice) for n in self.ev.order
                if self.spaces[n].faster.get(best.config[n])]
        builds = 1
        if not alts:
            return base
        alts.sort(key=lambda a: (-self.spaces[a[0]].fp32_bytes, a[0]))
        tries = [("all", dict(best.config, **dict(alts)))] if len(alts) > 1 else []
        tries += [(n, _with(best.config, n, c)) for n, c in alts]
        cur = base
        for label, config in tries:
            if builds >= self.auto.max_builds + 1 or not self._left():
                break
            if label != "all":
                config = dict(cur.config, **{label: config[label]})
                if self.ev.key(config) == self.ev.key(cur.config):
                    continue
            try:
                t, _ = self.ev.build(config, "speed", "faster forms: " + (
                    ", ".join(f"{n} -> {c}" for n, c in alts) if label == "all" else f"{label} -> {config[label]}"))
            except LpoError as e:  # e.g. no calibration data for a calibrated form: skip it
                log.info("AUTO: skipped faster forms (%s): %s", label, e)
                continue
            builds += 1
            if not t.feasible:
                continue
            ratio = self.ev.speedup(cur.config, t.config)
            t.extra["p50_vs_previous"] = ratio
            log.info("AUTO: %s measures %.3fx the p50 of the configuration it would replace", t.change, ratio)
            if ratio <= 1.0 - self.auto.min_speedup:
                cur = t
                if label == "all":
                    break
        return cur
