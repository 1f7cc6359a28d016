"""The field's vocabulary: every name a row, a table or a method choice carries, defined once.

Plain constants (no torch, no numpy): the catalog stores these strings, so changing one changes data.
"""

from __future__ import annotations

# GELU variants (`gelu_variant` column); nx_dagster.model.gelu holds their formulas.
PRE_FIX = "pre_fix"  # the quick GELU x·sigmoid(1.702·x) of the published datasets
POST_FIX = "post_fix"  # GPT-2's own tanh GELU, the corrected data
GELU_VARIANTS: tuple[str, ...] = (PRE_FIX, POST_FIX)  # every variant, in recording order
GELU_FORMULAS = {PRE_FIX: "x*sigmoid(1.702*x)",  # each variant's formula as metadata and the UI show it
                 POST_FIX: "0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))"}
GELU_MEANINGS = {PRE_FIX: "reproduces the published datasets",  # what each lineage is, in a few words
                 POST_FIX: "GPT-2 as trained; the corrected data"}

# Activation record kinds (`kind` column of activation_records).
TOP = "top"  # the sequences with the largest maximum activation
RANDOM = "random"  # uniformly sampled sequences
QUANTILE = "quantile"  # sampled from one bin of the per-sequence maximum
RECORD_KINDS: tuple[str, ...] = (TOP, RANDOM, QUANTILE)  # every kind, in row order
SIMULATED_KINDS: tuple[str, ...] = (TOP, RANDOM)  # the kinds that are simulated and scored

# Splits (`split` column); quantile records have none.
EXPLAIN_SPLIT = "train"  # top records the explainer reads
CALIBRATION_SPLIT = "calibration"  # records that fit the simulation's calibration
SCORED_SPLIT = "valid"  # records the score is computed on
TEST_SPLIT = "test"  # held out from both
TOP_SPLITS: tuple[str, ...] = (EXPLAIN_SPLIT, CALIBRATION_SPLIT, SCORED_SPLIT, TEST_SPLIT)  # top, round-robin by rank
RANDOM_SPLITS: tuple[str, ...] = (CALIBRATION_SPLIT, SCORED_SPLIT, TEST_SPLIT)  # random, round-robin by rank

# Quantile bins of the per-sequence maximum activation.
QUANTILE_BOUNDARIES: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)  # quantiles separating the bins
N_QUANTILE_BINS = len(QUANTILE_BOUNDARIES) + 1  # 5 bins, numbered 0 (lowest) to 4

# Explainer and simulator methods (`explainer` and `simulator` columns).
TOKEN_LOOKUP = "token_lookup"  # offline, no LLM: the explainer and the simulator share this name
TOKEN_ACTIVATION_PAIRS = "token_activation_pairs"  # the paper's explainer prompt, through an LLM
EXPLAINERS: tuple[str, ...] = (TOKEN_LOOKUP, TOKEN_ACTIVATION_PAIRS)  # every explainer
JSON_LOGPROBS = "json_logprobs"  # simulator: expected values from the top_logprobs of a chat model's JSON reply
LOGPROB_FREE = "logprob_free"  # simulator: the same chat request without logprobs; the written numbers
ECHO_LOGPROBS = "echo_logprobs"  # simulator: the original all-at-once completions prompt, read from echoed logprobs
SIMULATORS: tuple[str, ...] = (TOKEN_LOOKUP, JSON_LOGPROBS, LOGPROB_FREE, ECHO_LOGPROBS)  # every simulator
JUDGES: tuple[str, ...] = (TOKEN_LOOKUP, JSON_LOGPROBS, LOGPROB_FREE)  # who answers detection/fuzzing/intruder

# Scorers: simulation (the 2023 method) and the classification and intruder scorers.
SIMULATION = "simulation"  # simulate each token's activation from the explanation, then correlate (scores)
DETECTION = "detection"  # does the neuron fire in this excerpt? (classification_scores)
FUZZING = "fuzzing"  # are the highlighted tokens the ones the explanation describes? (classification_scores)
INTRUDER = "intruder"  # which excerpt is another neuron's? no explanation (intruder_scores)
SCORERS: tuple[str, ...] = (SIMULATION, DETECTION, FUZZING, INTRUDER)  # every scorer

# The version of the activation recorder's output; a change makes recorded rows differ.
RECORDER_VERSION = "recorder-v3"
