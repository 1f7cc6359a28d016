"""Explain, simulate and score neurons (the method of "Language models can explain neurons in language
models"), with any OpenAI-compatible endpoint or fully offline.

records (activation_records + sequences) ──explain_neurons──► Explanation ──explanations_table──► explanations
(Explanation, NeuronRecords) pairs ──simulate──► Simulation ──simulations_table──► simulations
simulations table ──score_simulations──► scores;  LLMClient's Ledger ──sync_ledger──► llm_calls

Nothing here reads the environment or builds a client at import.
"""

from nx_dagster.explain.batch_scoring import score_simulations
from nx_dagster.explain.explainers import TOKEN_LOOKUP_VERSION, explain_neurons, token_lookup_explanation
from nx_dagster.explain.ledger import Ledger, default_ledger_path, sync_ledger
from nx_dagster.explain.llm import (
    CallStats, LLMAuthError, LLMClient, LLMRequest, LLMResult, LLMSettings, LLMUnreachableError,
)
from nx_dagster.explain.prompts import (
    EXPLAIN_PROMPT_VERSION, SIMULATE_ECHO_PROMPT_VERSION, SIMULATE_JSON_PROMPT_VERSION,
)
from nx_dagster.explain.records import (
    ActivationRecord, Explanation, NeuronRecords, Simulation, neuron_records_from_arrow, pair_by_neuron,
)
from nx_dagster.explain.scoring import Score, ScoredSequence, score_sequences
from nx_dagster.explain.simulators import SIMULATOR_VERSIONS, EchoUnsupportedError, simulate
from nx_dagster.explain.tables import (
    explanation_variants, explanations_from_table, explanations_table, simulations_table,
)

__all__ = [
    "ActivationRecord", "CallStats", "EXPLAIN_PROMPT_VERSION", "EchoUnsupportedError", "Explanation",
    "LLMAuthError", "LLMClient", "LLMRequest", "LLMResult", "LLMSettings", "LLMUnreachableError", "Ledger", "NeuronRecords",
    "SIMULATE_ECHO_PROMPT_VERSION", "SIMULATE_JSON_PROMPT_VERSION", "SIMULATOR_VERSIONS", "Score",
    "ScoredSequence", "Simulation", "TOKEN_LOOKUP_VERSION",
    "default_ledger_path", "explain_neurons", "explanation_variants", "explanations_from_table",
    "explanations_table", "neuron_records_from_arrow", "pair_by_neuron", "score_sequences", "score_simulations",
    "simulate", "simulations_table", "sync_ledger", "token_lookup_explanation",
]
