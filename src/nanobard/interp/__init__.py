"""Looking inside both model kinds: the Lens (one view of a scratch GPT, a Llama-style or a GPT-2
model), attention statistics, circuits (induction, ablation, logit lens, loss by position) and the
analysis that runs them all."""
