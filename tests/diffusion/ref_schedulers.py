"""Reference samplers for scheduler_test.cc, written from the diffusers scheduler semantics.

diffusers is not installed here, so this is an independent transcription in numpy/torch of what
DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler
(dpmsolver++, order 2, midpoint, lower_order_final) and LCMScheduler do, using numpy's own
linspace/arange/round/interp so that the C++ re-implementation of those is checked too.

Usage:
  ref_schedulers.py run CASES_JSON OUT_DIR
      CASES_JSON: [{"name": sampler, "steps": n, "seed": s, "config": {scheduler_config fields}}]
      Writes OUT_DIR/case_<i>.safetensors with the timesteps, sigmas (if any), init_noise_sigma,
      the initial noise and the sample after every step of a loop driven by a fake model
      out = 0.8 tanh(model_input) + 0.1 t / 1000 (float32).
  write_tiny(folder, seed=0, **overrides) writes folder/scheduler/scheduler_config.json.
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

# Stable Diffusion 1.5's scheduler/scheduler_config.json.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def write_tiny(folder, seed=0, **overrides):
    """Writes folder/scheduler/scheduler_config.json (SD1.5's, with `overrides`)."""
    del seed  # a scheduler has no weights
    config = dict(SD15_CONFIG)
    config.update(overrides)
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return path


def _cosine_betas(n, max_beta=0.999):
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta)
                         for i in range(n)], dtype=torch.float32)


def _zero_snr(betas):
    ac = torch.cumprod(1.0 - betas, dim=0)
    s = ac.sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    s = (s - sT) * (s0 / (s0 - sT))
    ab = s ** 2
    alphas = torch.cat([ab[0:1], ab[1:] / ab[:-1]])
    return 1 - alphas


class _Base:
    # Constructor defaults per diffusers class; from_config fills missing keys with these.
    DEFAULTS = {}

    def __init__(self, config):
        c = dict(self.DEFAULTS)
        c.update({k: v for k, v in config.items() if k in self.DEFAULTS})
        self.c = c
        n = c["num_train_timesteps"]
        if c.get("trained_betas") is not None:
            betas = torch.tensor(c["trained_betas"], dtype=torch.float32)
        elif c["beta_schedule"] == "linear":
            betas = torch.linspace(c["beta_start"], c["beta_end"], n, dtype=torch.float32)
        elif c["beta_schedule"] == "scaled_linear":
            betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n,
                                   dtype=torch.float32) ** 2
        else:
            betas = _cosine_betas(n)
        if c.get("rescale_betas_zero_snr"):
            betas = _zero_snr(betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = None

    init_noise_sigma = 1.0

    def scale_model_input(self, x, i):
        return x


_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
           "beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
           "steps_offset": 0, "rescale_betas_zero_snr": False}


def _x0_eps(pred_type, out, x, a):
    if pred_type == "epsilon":
        return (x - (1 - a) ** 0.5 * out) / a ** 0.5, out
    if pred_type == "sample":
        return out, (x - a ** 0.5 * out) / (1 - a) ** 0.5
    return a ** 0.5 * x - (1 - a) ** 0.5 * out, a ** 0.5 * out + (1 - a) ** 0.5 * x


class Ddim(_Base):
    DEFAULTS = dict(_COMMON, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                    timestep_spacing="leading")

    def __init__(self, config):
        super().__init__(config)
        self.final = torch.tensor(1.0) if self.c["set_alpha_to_one"] else self.alphas_cumprod[0]

    def set_timesteps(self, steps):
        n, sp = self.c["num_train_timesteps"], self.c["timestep_spacing"]
        if sp == "linspace":
            t = np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
        elif sp == "leading":
            t = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(np.int64)
            t += self.c["steps_offset"]
        else:
            t = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(t)
        self.steps = steps

    def step(self, out, i, x, gen):
        t = int(self.timesteps[i])
        prev = t - self.c["num_train_timesteps"] // self.steps
        a = self.alphas_cumprod[t]
        ap = self.alphas_cumprod[prev] if prev >= 0 else self.final
        x0, eps = _x0_eps(self.c["prediction_type"], out, x, a)
        if self.c["clip_sample"]:
            x0 = x0.clamp(-self.c["clip_sample_range"], self.c["clip_sample_range"])
        return ap ** 0.5 * x0 + (1 - ap) ** 0.5 * eps


def _sigma_to_t(sigma, log_sigmas):
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(np.shape(sigma))


def _karras(smin, smax, steps, rho=7.0):
    ramp = np.linspace(0, 1, steps)
    lo, hi = smin ** (1 / rho), smax ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class Euler(_Base):
    DEFAULTS = dict(_COMMON, use_karras_sigmas=False, timestep_spacing="linspace")
    ancestral = False

    def __init__(self, config):
        super().__init__(config)
        if self.c["rescale_betas_zero_snr"]:
            self.alphas_cumprod[-1] = 2 ** -24

    def set_timesteps(self, steps):
        n, sp = self.c["num_train_timesteps"], self.c["timestep_spacing"]
        if sp == "linspace":
            t = np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
        elif sp == "leading":
            t = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(np.float32)
            t += self.c["steps_offset"]
        else:
            t = np.arange(n, 0, -n / steps).round().copy().astype(np.float32) - 1
        sig = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        log_sigmas = np.log(sig)
        sigmas = np.interp(t, np.arange(0, len(sig)), sig)
        if self.c.get("use_karras_sigmas") and not self.ancestral:
            sigmas = _karras(sigmas[-1].item(), sigmas[0].item(), steps)
            t = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas])
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(t.astype(np.float32))

    @property
    def init_noise_sigma(self):
        m = self.sigmas.max()
        return m if self.c["timestep_spacing"] in ("linspace", "trailing") else (m ** 2 + 1) ** 0.5

    def scale_model_input(self, x, i):
        return x / ((self.sigmas[i] ** 2 + 1) ** 0.5)

    def _x0(self, out, x, s):
        p = self.c["prediction_type"]
        if p == "epsilon":
            return x - s * out
        if p == "v_prediction":
            return out * (-s / (s ** 2 + 1) ** 0.5) + x / (s ** 2 + 1)
        return out

    def step(self, out, i, x, gen):
        s = self.sigmas[i]
        x0 = self._x0(out, x, s)
        return x + (x - x0) / s * (self.sigmas[i + 1] - s)


class EulerAncestral(Euler):
    DEFAULTS = dict(_COMMON, timestep_spacing="linspace")
    ancestral = True

    def step(self, out, i, x, gen):
        s_from, s_to = self.sigmas[i], self.sigmas[i + 1]
        x0 = self._x0(out, x, s_from)
        up = (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5
        down = (s_to ** 2 - up ** 2) ** 0.5
        prev = x + (x - x0) / s_from * (down - s_from)
        noise = torch.randn(out.shape, generator=gen, dtype=out.dtype)
        return prev + noise * up


class Dpm(_Base):
    DEFAULTS = dict(_COMMON, use_karras_sigmas=False, timestep_spacing="linspace")

    def __init__(self, config, karras=False):
        super().__init__(config)
        if self.c["rescale_betas_zero_snr"]:
            self.alphas_cumprod[-1] = 2 ** -24
        self.karras = karras or self.c["use_karras_sigmas"]

    def set_timesteps(self, steps):
        n, sp = self.c["num_train_timesteps"], self.c["timestep_spacing"]
        last = n
        if sp == "linspace":
            t = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif sp == "leading":
            r = last // (steps + 1)
            t = (np.arange(0, steps + 1) * r).round()[::-1][:-1].copy().astype(np.int64)
            t += self.c["steps_offset"]
        else:
            t = np.arange(last, 0, -n / steps).round().copy().astype(np.int64) - 1
        sig = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        log_sigmas = np.log(sig)
        if self.karras:
            flipped = np.flip(sig).copy()
            sigmas = _karras(flipped[-1].item(), flipped[0].item(), steps)
            t = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas])
            if self.c["beta_schedule"] != "squaredcos_cap_v2":
                t = t.round()
        else:
            sigmas = np.interp(t, np.arange(0, len(sig)), sig)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(t).to(torch.int64)
        self.outputs = [None, None]
        self.lower = 0

    @staticmethod
    def _vp(s):
        a = 1 / ((s ** 2 + 1) ** 0.5)
        return a, s * a

    def step(self, out, i, x, gen):
        a0, s0 = self._vp(self.sigmas[i])
        p = self.c["prediction_type"]
        if p == "epsilon":
            x0 = (x - s0 * out) / a0
        elif p == "sample":
            x0 = out
        else:
            x0 = a0 * x - s0 * out
        self.outputs = [self.outputs[1], x0]
        at, st = self._vp(self.sigmas[i + 1])
        lam_t, lam_0 = torch.log(at) - torch.log(st), torch.log(a0) - torch.log(s0)
        h = lam_t - lam_0
        final = i == len(self.timesteps) - 1
        if self.lower < 1 or final:
            prev = (st / s0) * x - (at * (torch.exp(-h) - 1.0)) * x0
        else:
            a1, s1 = self._vp(self.sigmas[i - 1])
            lam_1 = torch.log(a1) - torch.log(s1)
            r0 = (lam_0 - lam_1) / h
            d1 = (1.0 / r0) * (x0 - self.outputs[0])
            prev = ((st / s0) * x - (at * (torch.exp(-h) - 1.0)) * x0
                    - 0.5 * (at * (torch.exp(-h) - 1.0)) * d1)
        self.lower = min(self.lower + 1, 2)
        return prev


class Lcm(_Base):
    DEFAULTS = dict(_COMMON, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    original_inference_steps=50, clip_sample=False, clip_sample_range=1.0,
                    set_alpha_to_one=True, timestep_spacing="leading", timestep_scaling=10.0)

    def set_timesteps(self, steps):
        orig = self.c["original_inference_steps"]
        k = self.c["num_train_timesteps"] // orig
        origin = (np.asarray(list(range(1, orig + 1))) * k - 1)[::-1].copy()
        idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
        self.timesteps = torch.from_numpy(origin[idx]).long()

    def step(self, out, i, x, gen):
        t = self.timesteps[i]
        prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else t
        a, ap = self.alphas_cumprod[t], self.alphas_cumprod[prev]
        st = t * self.c["timestep_scaling"]
        c_skip = 0.25 / (st ** 2 + 0.25)
        c_out = st / (st ** 2 + 0.25) ** 0.5
        x0, _ = _x0_eps(self.c["prediction_type"], out, x, a)
        if self.c["clip_sample"]:
            x0 = x0.clamp(-self.c["clip_sample_range"], self.c["clip_sample_range"])
        denoised = c_out * x0 + c_skip * x
        if i == len(self.timesteps) - 1:
            return denoised
        noise = torch.randn(out.shape, generator=gen, dtype=denoised.dtype)
        return ap.sqrt() * denoised + (1 - ap).sqrt() * noise


def make(name, config):
    return {"ddim": lambda: Ddim(config), "euler": lambda: Euler(config),
            "euler_a": lambda: EulerAncestral(config), "dpmpp_2m": lambda: Dpm(config),
            "dpmpp_2m_karras": lambda: Dpm(config, karras=True), "lcm": lambda: Lcm(config)}[name]()


def fake_model(x, t):
    return 0.8 * torch.tanh(x) + 0.1 * (float(t) / 1000.0)


def run_case(case):
    s = make(case["name"], case["config"])
    s.set_timesteps(case["steps"])
    gen = torch.Generator().manual_seed(case["seed"])
    noise = torch.randn((1, 4, 2, 3), generator=gen, dtype=torch.float32)
    x = noise * s.init_noise_sigma
    out = {"timesteps": s.timesteps.to(torch.float64), "noise": noise,
           "init_noise_sigma": torch.tensor([float(s.init_noise_sigma)], dtype=torch.float64)}
    if s.sigmas is not None:
        out["sigmas"] = s.sigmas.to(torch.float64)
    for i, t in enumerate(s.timesteps):
        model_out = fake_model(s.scale_model_input(x, i), t).to(torch.float32)
        x = s.step(model_out, i, x, gen).to(torch.float32)
        out["step_%d" % i] = x
    return out


def main(argv):
    if len(argv) != 4 or argv[1] != "run":
        sys.exit(__doc__)
    with open(argv[2]) as f:
        cases = json.load(f)
    for i, case in enumerate(cases):
        config = dict(SD15_CONFIG)
        config.update(case.get("config", {}))
        case = dict(case, config=config)
        st_io.save(os.path.join(argv[3], "case_%d.safetensors" % i), run_case(case))


if __name__ == "__main__":
    main(sys.argv)
