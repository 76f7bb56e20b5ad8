"""Draft proposers: one file each, all behind :class:`~pard.decoding.proposers.base.Proposer`."""

from .autoregressive import AutoregressiveDraftProposer
from .base import Proposal, Proposer
from .parallel import ParallelDraftProposer

__all__ = ["AutoregressiveDraftProposer", "ParallelDraftProposer", "Proposal", "Proposer"]
