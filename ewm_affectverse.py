"""The Emotion World Module (paper section 3.2, appendix D): imagination, MAMA belief aggregation, up-projection.

Remote code: imports only torch and each other. Shapes: B batch, L tokens, d LLM width, w = d_w working width,
S rollout steps, N = N_s future queries, Q = N_q belief queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttentionLayer(nn.Module):
    """Pre-LN cross-attention + GELU FFN, both residual (D.2: "2 layers with Pre-LN, 8 heads, GELU FFN")."""

    def __init__(self, dim: int, heads: int, ffn_mult: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * ffn_mult), nn.GELU(), nn.Linear(dim * ffn_mult, dim))

    def forward(self, x, context, valid, need_weights=False):
        # x (B, Q, w), context (B, L, w), valid (B, L) bool: True where the key is real
        kv = self.norm_kv(context)
        out, weights = self.attn(self.norm_q(x), kv, kv, key_padding_mask=~valid, need_weights=need_weights)
        x = x + out
        return x + self.ff(self.norm_ff(x)), weights  # weights (B, Q, L) averaged over heads, or None


class CrossAttentionBlock(nn.Module):
    """A stack of ``CrossAttentionLayer``; returns the last layer's attention weights when asked."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, ffn_mult) for _ in range(layers))

    def forward(self, x, context, valid, need_weights=False):
        weights = None
        for i, layer in enumerate(self.layers):
            x, weights = layer(x, context, valid, need_weights and i == len(self.layers) - 1)
        return x, weights


class Imagination(nn.Module):
    """One modality's S-step rollout with shared cross-attention and step embeddings (Eq. 4, 14-16)."""

    def __init__(self, config):
        super().__init__()
        w, n = config.ewm_hidden_size, config.future_queries
        self.future_queries = nn.Parameter(torch.empty(n, w))  # f_{1:N_s}
        self.step_embeddings = nn.Parameter(torch.empty(config.rollout_steps, w))  # e_step^(s)
        self.block = CrossAttentionBlock(w, config.ewm_num_heads, config.ewm_ffn_mult, config.imagination_layers)
        self.out = nn.Linear(w, w)  # W_out

    def forward(self, context, valid):
        # context (B, L, w) = C^(1), valid (B, L) -> imagined (B, S, N, w)
        batch = context.shape[0]
        ctx, ctx_valid, steps = context, valid, []
        for step_embedding in self.step_embeddings:
            queries = (self.future_queries + step_embedding).expand(batch, -1, -1)
            imagined = self.out(self.block(queries, ctx, ctx_valid)[0])  # Y^(s) (B, N, w)
            steps.append(imagined)
            # C^(s+1) = [C^(1); Y^(s)] (Eq. 4): the first context plus only the latest step's output.
            ctx = torch.cat([context, imagined], dim=1)
            ctx_valid = torch.cat([valid, valid.new_ones(imagined.shape[:2])], dim=1)
        return torch.stack(steps, dim=1)


class BeliefAggregator(nn.Module):
    """MAMA: Q learned belief queries cross-attending to the imagined memory (Eq. 7, 19)."""

    def __init__(self, config, num_queries: int):
        super().__init__()
        w = config.ewm_hidden_size
        self.queries = nn.Parameter(torch.empty(num_queries, w))  # b_{1:N_q}
        self.block = CrossAttentionBlock(w, config.ewm_num_heads, config.ewm_ffn_mult, config.aggregator_layers)

    def forward(self, memory, valid, need_weights=False):
        # memory (B, M, w), valid (B, M) -> beliefs (B, Q, w), weights (B, Q, M) or None
        return self.block(self.queries.expand(memory.shape[0], -1, -1), memory, valid, need_weights)


def pooling_matrix(starts, lengths, size: int, bins: int):
    """(B, bins, size) rows averaging tokens [start, start+length) into ``bins`` adaptive-average-pool bins.

    Matches ``F.adaptive_avg_pool1d`` per sample (bin i covers floor(i*n/bins) .. ceil((i+1)*n/bins)), for
    variable ``lengths`` in one batched matmul. A zero length gives a zero row.
    """
    i = torch.arange(bins, device=lengths.device)
    lo = starts[:, None] + torch.div(i[None] * lengths[:, None], bins, rounding_mode="floor")
    hi = starts[:, None] + torch.div((i[None] + 1) * lengths[:, None] + bins - 1, bins, rounding_mode="floor")
    t = torch.arange(size, device=lengths.device)
    inside = (t[None, None] >= lo[..., None]) & (t[None, None] < hi[..., None])  # (B, bins, size)
    return inside.float() / inside.sum(-1, keepdim=True).clamp(min=1)


def splice_past(full, past_states, past_len):
    """The EWM input of ``ewm_observation="past"``: ``past_states`` before each row's ``past_len``, ``full`` after.

    full (B, L, d) from the pass over the whole prefix (it gives the imagination targets), past_states (B, L', d)
    from a pass over each modality's past only, left-aligned like ``full``; past_len (B,). Returns (B, L, d).
    """
    width = min(full.shape[1], past_states.shape[1])
    inside = torch.arange(width, device=full.device)[None] < past_len[:, None]  # (B, width)
    head = torch.where(inside[..., None], past_states[:, :width].to(full.dtype), full[:, :width])
    return torch.cat([head, full[:, width:]], dim=1)


@dataclass
class EWMOutput:
    """What the EWM gives the language model, and what it reports."""

    beliefs: torch.Tensor  # (B, 2*N_b, d) up-projected beliefs; row b uses its first n_beliefs[b]
    n_beliefs: torch.Tensor  # (B,) number of valid belief tokens per sample
    imagination_loss: torch.Tensor | None = None  # scalar, Eq. 21
    imagination_cosine: torch.Tensor | None = None  # (S,) mean cosine of each step with the future (Table 8)
    imagination_mse: torch.Tensor | None = None  # (S,) mean squared error of each step with the future (Table 8)
    attention: torch.Tensor | None = None  # (B, 2*N_b, 2*S*N) MAMA weights, video memory first (Figure 3)


class EmotionWorldModule(nn.Module):
    """Bottleneck -> cross-modal imagination -> MAMA -> residual boundary -> up-projection (Algorithm 1, 6-12)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        d, w, nb = config.text_config.hidden_size, config.ewm_hidden_size, config.num_belief_queries
        construction = config.belief_construction
        if construction != "random":
            self.down_video = nn.Linear(d, w)  # W_v (Eq. 2)
            self.down_audio = nn.Linear(d, w)  # W_a
        if construction in ("imagination", "ewm"):
            self.tags = nn.Parameter(torch.empty(2, w))  # e_self, e_cross (Eq. 3)
            self.imagine_video = Imagination(config)  # unshared per modality
            self.imagine_audio = Imagination(config)
        if construction == "ewm":
            self.type_embeddings = nn.Embedding(config.num_type_embeddings, w)  # E_type (Eq. 6, 17)
            self.aggregate_dual = BeliefAggregator(config, 2 * nb)  # separate regimes (Eq. 18)
            self.aggregate_single = BeliefAggregator(config, nb)
        if construction == "random":
            self.random_beliefs = nn.Parameter(torch.empty(2 * nb, w))
        if config.residual_boundary and construction != "random":
            self.residual = nn.Linear(w, w)  # W_r
            self.residual_scale = nn.Parameter(torch.empty(()))  # alpha, initialised to 0.1
        self.up = nn.Linear(w, d)  # W_ep, b_ep (D.4)
        self.up_norm = nn.LayerNorm(d)

    # -- the pieces -------------------------------------------------------------------------------------------
    def _context(self, own, own_valid, other, other_valid):
        """C^(1) for one branch (Eq. 3, 13) by the configured mode; own past alone where the other is absent."""
        has_other = other_valid.any(-1, keepdim=True)  # (B, 1)
        mode = self.config.imagination_context
        if mode == "self":
            other_valid = torch.zeros_like(other_valid)
        elif mode == "cross":
            own_valid = own_valid & ~has_other
        context = torch.cat([own + self.tags[0], other + self.tags[1]], dim=1)
        return context, torch.cat([own_valid, other_valid], dim=1)

    def _imagination_loss(self, imagined, target):
        # imagined (B, S, N, w), target (B, N, w) detached -> per sample and step (B, S): loss, cosine, MSE
        target = target[:, None].expand_as(imagined)
        mse = (imagined - target).pow(2).mean(dim=(-1, -2))
        cos = F.cosine_similarity(imagined, target, dim=-1).mean(-1)
        return mse + self.config.imagination_cosine_weight * (1 - cos), cos, mse

    def _pool(self, tokens, starts, lengths, bins):
        return pooling_matrix(starts, lengths, tokens.shape[1], bins).to(tokens.dtype) @ tokens

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, video, video_len, video_past, audio, audio_len, audio_past, use_video, use_audio,
                need_weights=False):
        """Build beliefs from the thinker's audio/video hidden states.

        Args:
            video (`torch.Tensor` of shape `(B, Lv, d)`): hidden states at each sample's video tokens, left-aligned.
            video_len (`torch.LongTensor` of shape `(B,)`): number of video tokens per sample (0: none).
            video_past (`torch.LongTensor` of shape `(B,)`): T_p,v = floor(kappa * L_v); tokens from there on are
                the detached future (Eq. 11). Equal to ``video_len`` at inference (no loss).
            audio, audio_len, audio_past: the same for audio.
            use_video, use_audio (`torch.BoolTensor` of shape `(B,)`): modalities the EWM reads per sample
                (after modality dropout).
        """
        cfg = self.config
        batch, nb = use_video.shape[0], cfg.num_belief_queries
        n_modalities = use_video.long() + use_audio.long()
        n_beliefs = torch.where(n_modalities == 2, 2 * nb, nb) * (n_modalities > 0)
        dtype = self.up.weight.dtype
        out = EWMOutput(beliefs=None, n_beliefs=n_beliefs)
        if cfg.belief_construction == "random":
            beliefs = self.random_beliefs.expand(batch, -1, -1)
            out.beliefs = self.up_norm(self.up(beliefs))
            return out

        zv = self.down_video(video.to(dtype))  # (B, Lv, w)
        za = self.down_audio(audio.to(dtype))  # (B, La, w)
        pos_v, pos_a = torch.arange(zv.shape[1], device=zv.device), torch.arange(za.shape[1], device=za.device)
        past_v = (pos_v[None] < video_past[:, None]) & use_video[:, None]  # (B, Lv)
        past_a = (pos_a[None] < audio_past[:, None]) & use_audio[:, None]

        if cfg.belief_construction == "pooling":
            memory = [self._pool(zv, torch.zeros_like(video_past), video_past * use_video, nb),
                      self._pool(za, torch.zeros_like(audio_past), audio_past * use_audio, nb)]
            beliefs = self._concat_available(memory, use_video, use_audio, nb)
        else:
            imagined = self._imagine(zv, past_v, za, past_a, use_video, use_audio, out)  # (B, 2, S*N, w)
            # Eq. 5 wherever a read modality has a future: training with a temporal split, or evaluation at a fixed
            # kappa (config.eval_keep_ratio); never at inference, where past = length.
            if ((video_past < video_len) & use_video).any() or ((audio_past < audio_len) & use_audio).any():
                self._supervise(imagined, zv, video_past, video_len, za, audio_past, audio_len,
                                use_video, use_audio, out)
            if cfg.belief_construction == "imagination":
                sn = imagined.shape[2]
                full = torch.full_like(video_past, sn)
                memory = [self._pool(imagined[:, 0], torch.zeros_like(full), full, nb),
                          self._pool(imagined[:, 1], torch.zeros_like(full), full, nb)]
                beliefs = self._concat_available(memory, use_video, use_audio, nb)
            else:
                beliefs = self._aggregate(imagined, use_video, use_audio, need_weights, out)

        if cfg.residual_boundary:
            beliefs = beliefs + self.residual_scale * self.residual(
                self._boundary(zv, video_past, use_video, za, audio_past, use_audio))[:, None]
        out.beliefs = self.up_norm(self.up(beliefs))  # (B, 2*N_b, d)
        return out

    def _imagine(self, zv, past_v, za, past_a, use_video, use_audio, out):
        """Run each branch on the samples that have its modality; (B, 2, S*N, w) memory, zeros where absent."""
        cfg = self.config
        sn = cfg.rollout_steps * cfg.future_queries
        imagined = zv.new_zeros(zv.shape[0], 2, sn, cfg.ewm_hidden_size)
        branches = ((0, self.imagine_video, zv, past_v, za, past_a, use_video),
                    (1, self.imagine_audio, za, past_a, zv, past_v, use_audio))
        for slot, branch, own, own_valid, other, other_valid, use in branches:
            rows = use.nonzero().squeeze(-1)
            if rows.numel():
                context, valid = self._context(own[rows], own_valid[rows], other[rows], other_valid[rows])
                imagined[rows, slot] = branch(context, valid).flatten(1, 2).to(imagined.dtype)
        return imagined

    def _supervise(self, imagined, zv, video_past, video_len, za, audio_past, audio_len, use_video, use_audio, out):
        """Eq. 5 against adaptive-pooled detached futures, averaged over steps and available modalities (Eq. 21)."""
        cfg = self.config
        steps, n = cfg.rollout_steps, cfg.future_queries
        losses, cosines, mses = [], [], []
        for slot, z, past, length in ((0, zv, video_past, video_len), (1, za, audio_past, audio_len)):
            target = self._pool(z.detach(), past, length - past, n)  # Z-bar^fut (B, N, w)
            loss, cos, mse = self._imagination_loss(imagined[:, slot].unflatten(1, (steps, n)), target)
            losses.append(loss)
            cosines.append(cos)
            mses.append(mse)
        use = torch.stack([use_video, use_audio], dim=1).to(imagined.dtype)  # (B, 2)
        per_sample = (torch.stack(losses, 1).mean(-1) * use).sum(1) / use.sum(1).clamp(min=1)
        has_any = use.sum(1) > 0
        if has_any.any():
            out.imagination_loss = per_sample[has_any].mean()
            weights = use[..., None]  # (B, 2, 1)
            out.imagination_cosine = (torch.stack(cosines, 1) * weights).sum((0, 1)) / weights.sum((0, 1))
            out.imagination_mse = (torch.stack(mses, 1).detach() * weights).sum((0, 1)) / weights.sum((0, 1))

    def _aggregate(self, imagined, use_video, use_audio, need_weights, out):
        """MAMA (Eq. 6-7, 17-19): typed memory, dual or single aggregator per sample; (B, 2*N_b, w)."""
        cfg = self.config
        batch, _, sn, w = imagined.shape
        types = torch.tensor([0, 1], device=imagined.device)  # 0 video imagination, 1 audio imagination
        memory = (imagined + self.type_embeddings(types)[None, :, None]).flatten(1, 2)  # (B, 2*S*N, w)
        valid = torch.stack([use_video, use_audio], 1)[..., None].expand(-1, -1, sn).flatten(1)  # (B, 2*S*N)
        beliefs = imagined.new_zeros(batch, 2 * cfg.num_belief_queries, w)
        attention = imagined.new_zeros(batch, 2 * cfg.num_belief_queries, 2 * sn) if need_weights else None
        both = use_video & use_audio
        for rows, aggregator in ((both.nonzero().squeeze(-1), self.aggregate_dual),
                                 ((use_video ^ use_audio).nonzero().squeeze(-1), self.aggregate_single)):
            if rows.numel():
                b, weights = aggregator(memory[rows], valid[rows], need_weights)
                beliefs[rows, : b.shape[1]] = b.to(beliefs.dtype)
                if need_weights:
                    attention[rows, : b.shape[1]] = weights.to(attention.dtype)
        out.attention = attention
        return beliefs

    @staticmethod
    def _concat_available(memory, use_video, use_audio, nb):
        """[video N_b; audio N_b] for two modalities, the available one's N_b first otherwise; (B, 2*N_b, w)."""
        video, audio = memory
        single = torch.where(use_video[:, None, None], video, audio)
        dual = torch.cat([video, audio], dim=1)
        return torch.where((use_video & use_audio)[:, None, None], dual, torch.cat([single, audio * 0], dim=1))

    @staticmethod
    def _boundary(zv, video_past, use_video, za, audio_past, use_audio):
        """z-bar_bnd = mean of the last past video/audio tokens over available modalities; (B, w)."""
        rows = torch.arange(zv.shape[0], device=zv.device)
        vb = zv[rows, (video_past - 1).clamp(min=0)] * use_video[:, None]
        ab = za[rows, (audio_past - 1).clamp(min=0)] * use_audio[:, None]
        count = (use_video.long() + use_audio.long()).clamp(min=1)[:, None]
        return (vb + ab) / count
