"""Bugs in the Emotion World Module that ``tests/test_ewm_reference.py`` must catch (issue 23).

Data for a mutation runner: each entry replaces ``old`` (occurring exactly once in ``file``) by ``new``, and then at
least one of ``tests`` (pytest node ids, relative to the repository root) must fail. Every entry was checked by
hand: the tests pass on the module as it is and fail under each mutation alone (every listed test function fails,
no other does). Run mutated copies with ``--tb=no``: a failure's traceback prints the model, which is slow.
"""

REFERENCE = "tests/test_ewm_reference.py::"
TRAINING = REFERENCE + "test_each_preset_matches_the_reference_in_training"
KEEP_RATIOS = REFERENCE + "test_each_keep_ratio_matches_the_reference"
EVALUATION = REFERENCE + "test_evaluation_at_a_fixed_keep_ratio_matches_the_reference"
DROPOUT = REFERENCE + "test_modality_dropout_matches_the_reference"
INFERENCE = REFERENCE + "test_nothing_is_truncated_at_inference"
NO_FUTURE_GRADIENT = REFERENCE + "test_the_imagination_loss_sends_no_gradient_to_the_future_states"
GRADIENT = REFERENCE + "test_the_imagination_loss_gradient_equals_the_references"

EWM_MUTATIONS = [
    {
        "name": "eq4_step_output_not_appended",  # C^(s+1) = C^(1): every step sees the first context only
        "file": "ewm_affectverse.py",
        "old": "            ctx = torch.cat([context, imagined], dim=1)\n"
               "            ctx_valid = torch.cat([valid, valid.new_ones(imagined.shape[:2])], dim=1)\n",
        "new": "            ctx, ctx_valid = context, valid\n",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE, GRADIENT],
    },
    {
        "name": "future_target_not_detached",  # gradient flows into Z^fut (and W_v, W_a) through the target
        "file": "ewm_affectverse.py",
        "old": "target = self._pool(z.detach(), past, length - past, n)",
        "new": "target = self._pool(z, past, length - past, n)",
        "tests": [NO_FUTURE_GRADIENT, GRADIENT],
    },
    {
        "name": "residual_boundary_reads_first_token",  # v_b = Z_v[0] instead of Z_v[T_p - 1]
        "file": "ewm_affectverse.py",
        "old": "vb = zv[rows, (video_past - 1).clamp(min=0)] * use_video[:, None]",
        "new": "vb = zv[rows, torch.zeros_like(video_past)] * use_video[:, None]",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE],
    },
    {
        "name": "interleaved_second_group_gets_first_groups_beliefs",  # Eq. 8, 20
        "file": "modeling_affectverse.py",
        "old": "slot = torch.where(in_first, rank, first_out + rank - first_in)",
        "new": "slot = torch.where(in_first, rank, rank - first_in)",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE],
    },
    {
        "name": "eq4_context_accumulates_every_step",  # C^(s+1) = [C^(s); Y^(s)] instead of [C^(1); Y^(s)]
        "file": "ewm_affectverse.py",
        "old": "            ctx = torch.cat([context, imagined], dim=1)\n"
               "            ctx_valid = torch.cat([valid, valid.new_ones(imagined.shape[:2])], dim=1)\n",
        "new": "            ctx = torch.cat([ctx, imagined], dim=1)\n"
               "            ctx_valid = torch.cat([ctx_valid, valid.new_ones(imagined.shape[:2])], dim=1)\n",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE, GRADIENT],
    },
    {
        "name": "cosine_term_weight_ignored",  # Eq. 5: MSE + (1 - cos) instead of MSE + 1/2 (1 - cos)
        "file": "ewm_affectverse.py",
        "old": "return mse + self.config.imagination_cosine_weight * (1 - cos), cos, mse",
        "new": "return mse + (1 - cos), cos, mse",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, GRADIENT],
    },
    {
        "name": "imagination_loss_weight_ignored",  # Eq. 10: L_lm + L_img whatever lambda_img
        "file": "modeling_affectverse.py",
        "old": "loss = lm_loss + self.config.imagination_loss_weight * img_loss  # Eq. 10",
        "new": "loss = lm_loss + img_loss  # Eq. 10",
        "tests": [TRAINING],
    },
    {
        "name": "type_ids_swapped",  # Eq. 17: video memory typed as audio imagination and back
        "file": "ewm_affectverse.py",
        "old": "types = torch.tensor([0, 1], device=imagined.device)",
        "new": "types = torch.tensor([1, 0], device=imagined.device)",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE],
    },
    {
        "name": "context_tags_swapped",  # Eq. 3: own past tagged e_cross, other past e_self
        "file": "ewm_affectverse.py",
        "old": "context = torch.cat([own + self.tags[0], other + self.tags[1]], dim=1)",
        "new": "context = torch.cat([own + self.tags[1], other + self.tags[0]], dim=1)",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE, GRADIENT],
    },
    {
        "name": "target_pooled_from_the_past",  # Eq. 5: Z-bar from Z[:T_p] instead of Z[T_p:]
        "file": "ewm_affectverse.py",
        "old": "target = self._pool(z.detach(), past, length - past, n)",
        "new": "target = self._pool(z.detach(), torch.zeros_like(past), past, n)",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, GRADIENT],
    },
    {
        "name": "boundary_mean_counts_absent_modality",  # mean(v_b, a_b) over both even with one available
        "file": "ewm_affectverse.py",
        "old": "count = (use_video.long() + use_audio.long()).clamp(min=1)[:, None]",
        "new": "count = 2",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE],
    },
    {
        "name": "residual_scale_alpha_dropped",  # b + W_r z instead of b + alpha W_r z
        "file": "ewm_affectverse.py",
        "old": "beliefs = beliefs + self.residual_scale * self.residual(",
        "new": "beliefs = beliefs + self.residual(",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, DROPOUT, INFERENCE],
    },
    {
        "name": "loss_averaged_over_rows_without_media",  # Eq. 21 batch mean counts text-only rows as 0
        "file": "ewm_affectverse.py",
        "old": "out.imagination_loss = per_sample[has_any].mean()",
        "new": "out.imagination_loss = per_sample.mean()",
        "tests": [TRAINING, KEEP_RATIOS, EVALUATION, GRADIENT],
    },
    {
        "name": "modality_dropout_at_evaluation",  # D.1: dropout is for training only
        "file": "modeling_affectverse.py",
        "old": "if training and cfg.modality_dropout > 0:",
        "new": "if cfg.modality_dropout > 0:",
        "tests": [EVALUATION],
    },
    {
        "name": "truncation_at_inference",  # Eq. 12: kappa = 1 at inference, nothing removed
        "file": "modeling_affectverse.py",
        "old": "split = (training and cfg.temporal_split) or evaluating",
        "new": "split = cfg.temporal_split or evaluating",
        "tests": [INFERENCE],
    },
]
