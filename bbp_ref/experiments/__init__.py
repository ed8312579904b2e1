"""Reproducing the paper's experiments (docs/reproduction.md): the digits data split,
Claim 1 (how much of the prediction the bias carries), and the attribution maps that
`bbp_ref.plot` draws. Optional dependencies (scikit-learn, matplotlib) are imported
lazily, so importing this package needs only bbp_ref's own."""
