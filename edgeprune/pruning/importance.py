"""Importance criteria: one score per removable channel (unit), comparable across groups.

Each criterion produces per-channel scores for some *members* (a layer's output or input
channels on one tensor). A unit's score is the mean of its members' scores, each member
first divided by its own mean so big and small layers weigh the same; finally every group
is divided by its mean so groups compare under global ranking.
"""
from __future__ import annotations

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.pruning import rules
from edgeprune.pruning.criteria import CRITERIA
from edgeprune.pruning.groups import GroupSet

ACTIVATION_LAYERS = {"ReLU", "Activation", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU"}


def _normalise(values: np.ndarray) -> np.ndarray:
    """Divide by the mean, preserving the order: non-negative scores are only divided by their
    mean; scores with negative entries (caller-supplied, e.g. loss deltas) are first shifted
    so the smallest is 0. Constant or empty input gives all ones."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    if values.min() < 0:
        values = values - values.min()
    mean = values.mean()
    return values / mean if mean > 0 else np.ones_like(values)


class Criterion:
    """Base class: subclasses return member scores {tensor key: per-channel scores}."""

    name = "base"
    needs_data = False

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.notes: list = []

    def members(self, gs: GroupSet, data=None, labels=None) -> list:
        raise NotImplementedError

    def score(self, gs: GroupSet, data=None, labels=None) -> np.ndarray:
        """Unit scores (normalised per group mean) for every unit of ``gs``."""
        if self.needs_data and data is None:
            raise InputError(f"criterion '{self.name}' needs calibration data (--data)")
        n_units = int(gs.labels.max()) + 1 if len(gs.labels) else 0
        total = np.zeros(n_units)
        count = np.zeros(n_units)
        for key, values in self.members(gs, data, labels):
            values = _normalise(values)
            units = gs.units_of(key)
            if len(units) != len(values):  # e.g. depthwise multiplier: several channels per unit
                continue
            np.add.at(total, units, values)
            np.add.at(count, units, 1)
        scores = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        scores = self._fill_missing(gs, scores, data, labels)
        for g in gs.groups:
            scores[g.units] = _normalise(scores[g.units])
        return scores

    def _fill_missing(self, gs, scores, data, labels):
        missing = np.isnan(scores)
        if missing.any():
            scores[missing] = 1.0
        return scores

    def _inside(self, gs):
        """Members for the internal widths, for criteria that read tensors (see internal_members)."""
        found = internal_members(gs)
        if found:
            self.notes.append(f"{self.name}: attention heads/head dimensions ranked by their weights' L2 norm "
                              "(the criterion sees tensors, not the inside of a layer)")
        return found


class Magnitude(Criterion):
    """L1/L2 norm of each filter (and of each consumer's input slice): cheap, data-free.

    Which weights are a layer's filters, and which read its input channels, is the layer
    rule's knowledge (:meth:`LayerRule.filter_norms`, :meth:`LayerRule.input_norms`).
    """

    def __init__(self, p: int, seed: int = 0):
        super().__init__(seed)
        self.p = p
        self.name = f"l{p}"

    def members(self, gs, data=None, labels=None):
        members = []
        for node in gs.graph.layers.values():
            if node.calls != 1 or not node.outputs:
                continue
            weights = node.weights()
            if not weights:
                continue
            rule = rules.rule_for(node)
            values = rule.filter_norms(node, weights, self.p)
            if values is not None:
                members.append((node.outputs[0], values))
            if node.inputs:
                values = rule.input_norms(node, weights, self.p, gs.graph)
                if values is not None:
                    members.append((node.inputs[0], values))
        return members + internal_members(gs, self.p)


def internal_members(gs: GroupSet, p: int = 2) -> list:
    """Weight-norm members of every internal width (attention heads, head dims): the one view
    inside a layer that criteria reading tensors (Taylor, activation statistics) do not have,
    so they rank those units by this instead."""
    members = []
    for node in gs.graph.layers.values():
        keys = rules.internal_keys(node)
        if not keys:
            continue
        norms = rules.rule_for(node).internal_norms(node, node.weights(), p)
        members.extend((keys[name], values) for name, values in norms.items() if name in keys)
    return members


class BNScale(Criterion):
    """|gamma| of the BatchNormalization layers in the group; L1 where a group has none."""

    name = "bn"

    def members(self, gs, data=None, labels=None):
        out = []
        for node in gs.graph.layers.values():
            if node.class_name == "BatchNormalization" and node.calls == 1 and node.config.get("scale", True):
                out.append((node.outputs[0], np.abs(node.weights()[0])))
        return out

    def _fill_missing(self, gs, scores, data, labels):
        missing = np.isnan(scores)
        if missing.any():
            fallback = Magnitude(1).score(gs)
            scores[missing] = fallback[missing]
            groups = sorted({gs.groups[int(gs.unit_group[u])].name for u in np.flatnonzero(missing)
                             if gs.groups[int(gs.unit_group[u])].locked is None})
            if groups:
                self.notes.append(f"bn: {len(groups)} group(s) without BatchNormalization scored by l1: "
                                  + ", ".join(groups[:10]) + (" ..." if len(groups) > 10 else ""))
        return scores


class FixedScores(Criterion):
    """Scores given by the caller per unit (tests, external sensitivity analyses)."""

    name = "fixed"

    def __init__(self, scores, seed: int = 0):
        super().__init__(seed)
        self.fixed = np.asarray(scores, dtype=np.float64)

    def members(self, gs, data=None, labels=None):
        return []

    def _fill_missing(self, gs, scores, data, labels):
        return self.fixed.copy()


class RandomScore(Criterion):
    """Seeded random scores: the baseline every real criterion must beat."""

    name = "random"

    def members(self, gs, data=None, labels=None):
        return []

    def _fill_missing(self, gs, scores, data, labels):
        return np.random.default_rng(self.seed).random(len(scores)) + 1e-6


def _batches(x, size=16, limit=256):
    x = x[:limit]
    for i in range(0, len(x), size):
        yield i, x[i:i + size]


def _group_taps(gs: GroupSet) -> list:
    """One tensor per prunable group: the output of an activation if there is one, else the
    producer's output. This is the tensor whose channels the consumers read, i.e. what
    removing a unit takes away (after BN and the nonlinearity)."""
    taps = []
    for g in gs.prunable:
        candidates = [k for k in g.tensors if gs.graph.layers[gs.graph.tensors[k].producer].calls == 1
                      and gs.graph.tensors[k].symbolic is not None]  # internal widths have no tensor
        act = [k for k in candidates if gs.graph.layers[gs.graph.tensors[k].producer].class_name
               in ACTIVATION_LAYERS]
        prod = [k for k in candidates if gs.graph.tensors[k].producer in g.producers]
        taps.extend((act or prod or candidates)[:1])
    return taps


def _tap_outputs(gs: GroupSet, taps) -> list:
    """The model's own symbolic tensors for ``taps`` (to build a feature extractor)."""
    return [gs.graph.tensors[k].symbolic for k in taps]


class Taylor(Criterion):
    """First-order Taylor on feature maps (Molchanov et al. 2017): for each channel of the
    tensor the group's consumers read (post-BN, post-activation), |mean over positions of
    activation x dLoss/dactivation| per sample, averaged over the calibration samples.

    That is the first-order estimate of the loss change when the channel is removed. Labels
    give the loss; without labels the model's own predictions (argmax) are the targets.
    """

    name = "taylor"
    needs_data = True

    def members(self, gs, data=None, labels=None):
        from edgeprune.base.env import keras_of, tf

        taps = _group_taps(gs)
        if not taps:
            return self._inside(gs)
        model = gs.graph.model
        tfm, keras = tf(), keras_of(model)
        extractor = keras.Model(model.inputs, _tap_outputs(gs, taps) + [model.outputs[0]])
        acc = [np.zeros(gs.graph.tensors[k].channels, dtype=np.float64) for k in taps]
        seen = 0
        for i, xb in _batches(np.asarray(data, dtype=np.float32)):
            with tfm.GradientTape() as tape:
                res = extractor(xb, training=False)
                feats, pred = list(res[:-1]), res[-1]
                tape.watch(feats)
                # per-sample gradients: the batch loss summed, not averaged
                loss = self._loss(tfm, pred, None if labels is None else labels[i:i + len(xb)]) * len(xb)
            grads = tape.gradient(loss, feats)
            for a, f, g, k in zip(acc, feats, grads, taps):
                if g is None:
                    continue
                c = gs.graph.tensors[k].channels
                per_sample = (np.asarray(f, np.float64) * np.asarray(g, np.float64)).reshape(len(xb), -1, c).mean(1)
                a += np.abs(per_sample).sum(0)
            seen += len(xb)
        return [(k, a / max(seen, 1)) for k, a in zip(taps, acc)] + self._inside(gs)


    @staticmethod
    def _loss(tfm, pred, y):
        if pred.shape.rank == 2 and pred.shape[-1] and pred.shape[-1] > 1:
            if y is None:  # pseudo-labels: the model's own prediction
                y = tfm.argmax(pred, axis=-1)
            y = np.asarray(y)
            if y.ndim > 1 and y.shape[-1] == pred.shape[-1]:
                y = y.argmax(-1)
            probs = pred
            if float(tfm.reduce_min(pred)) < 0 or abs(float(tfm.reduce_sum(pred[0])) - 1) > 1e-3:
                probs = tfm.nn.softmax(pred)
            return tfm.reduce_mean(tfm.keras.losses.sparse_categorical_crossentropy(y, probs))
        target = tfm.stop_gradient(pred) if y is None else tfm.constant(np.asarray(y, np.float32))
        if y is None:  # no labels for a regression head: sensitivity of the output energy
            return tfm.reduce_mean(tfm.square(pred))
        return tfm.reduce_mean(tfm.square(pred - tfm.reshape(target, tfm.shape(pred))))


class ActivationStat(Criterion):
    """Statistics of each channel's post-activation output on calibration data."""

    needs_data = True

    def __init__(self, kind: str, seed: int = 0):
        super().__init__(seed)
        self.kind = kind
        self.name = kind

    def _taps(self, gs):
        """One tensor per prunable group: the output of an activation if there is one."""
        return _group_taps(gs)

    def members(self, gs, data=None, labels=None):
        from edgeprune.base.env import keras_of

        taps = self._taps(gs)
        if not taps:
            return self._inside(gs)
        model = gs.graph.model
        keras = keras_of(model)
        outputs = _tap_outputs(gs, taps)
        extractor = keras.Model(model.inputs, outputs)
        stats = [[] for _ in taps]
        for _, xb in _batches(np.asarray(data, dtype=np.float32)):
            feats = extractor(xb, training=False)
            feats = feats if isinstance(feats, (list, tuple)) else [feats]
            for s, f, k in zip(stats, feats, taps):
                t = gs.graph.tensors[k]
                arr = np.asarray(f).reshape(len(xb), -1, t.channels)  # spatial..., channel
                s.append(arr)
        out = []
        for s, k in zip(stats, taps):
            arr = np.concatenate(s, 0)
            out.append((k, self._reduce(arr)))
        return out + self._inside(gs)

    def _reduce(self, arr):
        if self.kind == "mean_activation":
            return np.abs(arr).mean((0, 1))
        if self.kind == "apoz":  # fewer zeros = more important
            return 1.0 - (arr <= 0).mean((0, 1)) + 1e-6
        # entropy of each channel's per-sample mean activation
        per_sample = arr.mean(1)
        ent = []
        for c in range(per_sample.shape[1]):
            hist, _ = np.histogram(per_sample[:, c], bins=16)
            p = hist[hist > 0] / hist.sum()
            ent.append(float(-(p * np.log(p)).sum()) + 1e-6)
        return np.asarray(ent)


class GroupNorm(Criterion):
    """L2 norm of all of a unit's parameters taken together (DepGraph's group norm).

    Where :class:`Magnitude` averages each layer's normalised filter norms, this sums the
    squares of everything that goes with the unit (filter, BN scale and shift, consumers'
    input slices), unnormalised: after a structured-sparsity phase
    (:mod:`edgeprune.training.structured_sparsity`) the units the penalty drove to zero score
    zero, and global ranking removes exactly those.
    """

    name = "group_norm"

    def score(self, gs: GroupSet, data=None, labels=None) -> np.ndarray:
        from edgeprune.pruning.group_params import unit_norms

        scores = unit_norms(gs)
        for g in gs.groups:
            scores[g.units] = _normalise(scores[g.units])
        return scores




def get_criterion(name: str, seed: int = 0) -> Criterion:
    """The criterion called ``name`` (or ``name`` itself if it is a Criterion); InputError if unknown."""
    if isinstance(name, Criterion):
        return name
    if name == "l1":
        return Magnitude(1, seed)
    if name == "l2":
        return Magnitude(2, seed)
    if name == "group_norm":
        return GroupNorm(seed)
    if name == "bn":
        return BNScale(seed)
    if name == "taylor":
        return Taylor(seed)
    if name in ("mean_activation", "apoz", "entropy"):
        return ActivationStat(name, seed)
    if name == "random":
        return RandomScore(seed)
    raise InputError(f"unknown criterion '{name}'; expected one of {', '.join(CRITERIA)}")
