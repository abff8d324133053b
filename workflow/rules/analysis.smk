# Prior estimation (GLA) and the causal backdoor ensemble: see issue 3.
