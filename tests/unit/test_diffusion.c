/* test_diffusion.c: the DDPM schedule against closed forms, the course's
 * DDPM step against a hand computation, classifier-free guidance, and the
 * training examples of every objective (the other samplers:
 * test_sampler.c). */
#include <math.h>
#include <string.h>

#include "diffmpi/config.h"
#include "diffmpi/data.h"
#include "diffmpi/diffusion.h"
#include "test_util.h"

static void test_schedule(void) {
    ddpm_schedule s;
    ddpm_schedule_init(&s);
    EXPECT(s.T == 300, "T = 300");
    EXPECT_CLOSE(s.beta[0], 1e-4, 1e-15, 0, "beta_0");
    EXPECT_CLOSE(s.beta[299], 0.02, 1e-15, 0, "beta_299");
    EXPECT_CLOSE(s.beta[150], 1e-4 + 150 * (0.02 - 1e-4) / 299, 1e-15, 0, "beta_150 linear");
    /* abar_t = prod (1 - beta_s); closed form of its log for a linear beta
     * is not exact, so compare with a direct product in long double. */
    long double p = 1.0L;
    for (int t = 0; t < 300; t++) {
        p *= 1.0L - (1e-4L + (0.02L - 1e-4L) * t / 299.0L);
        if (t == 0 || t == 99 || t == 299)
            EXPECT_CLOSE(s.abar[t], (double)p, 0, 1e-12, "abar_t");
    }
    EXPECT(s.abar[299] > 0.045 && s.abar[299] < 0.051, "abar_299 = %g (about exp(-3))",
           s.abar[299]);
    EXPECT(ddpm_timestep(0, 300) == 299 && ddpm_timestep(299, 300) == 0 &&
               ddpm_timestep(100, 300) == 199, "300 steps visit 299..0");
    EXPECT(ddpm_timestep(0, 50) == 299 && ddpm_timestep(49, 50) == 0, "50 steps span 299..0");
}

static void test_steps(void) {
    ddpm_schedule s;
    ddpm_schedule_init(&s);
    /* DDPM step at t = 10 by hand: x0 = (x - sqrt(1-abar) eps)/sqrt(abar),
     * x' = sqrt(abar_9) beta/(1-abar) x0 + sqrt(alpha)(1-abar_9)/(1-abar) x
     *      + sqrt(beta) z. */
    float x[2] = {0.3f, -1.2f}, eps[2] = {0.5f, 0.1f}, z[2] = {-0.7f, 2.0f};
    double want[2];
    int t = 10;
    for (int k = 0; k < 2; k++) {
        double ab = s.abar[t], ap = s.abar[t - 1], b = s.beta[t];
        double x0 = (x[k] - sqrt(1 - ab) * eps[k]) / sqrt(ab);
        want[k] = sqrt(ap) * b / (1 - ab) * x0 + sqrt(1 - b) * (1 - ap) / (1 - ab) * x[k] +
                  sqrt(b) * z[k];
    }
    ddpm_step(&s, t, t - 1, x, eps, z, 2);
    EXPECT_CLOSE(x[0], want[0], 1e-6, 1e-5, "ddpm step [0]");
    EXPECT_CLOSE(x[1], want[1], 1e-6, 1e-5, "ddpm step [1]");
    /* The last step (t = 0, abar_{-1} = 1) returns x0_hat and adds no noise. */
    float y[1] = {0.4f}, e0[1] = {0.2f}, z0[1] = {100.0f};
    double x0 = (0.4 - sqrt(1 - s.abar[0]) * 0.2) / sqrt(s.abar[0]);
    ddpm_step(&s, 0, -1, y, e0, z0, 1);
    EXPECT_CLOSE(y[0], x0, 1e-6, 1e-5, "last ddpm step returns x0_hat");
    float ec[2] = {1.0f, 3.0f}, eu[2] = {0.5f, 1.0f}, out[2];
    guidance_combine(out, ec, eu, 5.0f, 2);
    EXPECT_CLOSE(out[0], 3.0, 1e-6, 0, "cfg [0] = eu + 5 (ec - eu)");
    EXPECT_CLOSE(out[1], 11.0, 1e-6, 0, "cfg [1]");
}

static void test_examples(void) {
    ddpm_schedule s;
    ddpm_schedule_init(&s);
    dm_config c;
    config_defaults(&c);
    static float x[DM_PIX], z[DM_PIX], tg[DM_PIX], est[DM_PIX];
    for (int k = 0; k < DM_PIX; k++) x[k] = (float)(k % 17) / 16.0f;
    float t;
    int label, dropped = 0, seen[DDPM_T] = {0};
    c.objective = OBJ_DDPM;
    c.conditioning = CONDITIONING_CLASS;
    for (int pos = 0; pos < 2000; pos++) {
        diffusion_example(&c, &s, z, tg, &t, &label, x, 7, 3, pos);
        int ti = (int)lroundf(t * DDPM_T);
        seen[ti]++;
        dropped += label == -1;
        EXPECT(label == -1 || label == 7, "label kept or dropped");
        if (pos < 5) {
            /* x_t = sqrt(abar) x + sqrt(1-abar) eps, target eps: x0_hat from
             * the true eps gives x back. */
            diffusion_x0_hat(&c, &s, est, z, tg, t, DM_PIX);
            double err = 0;
            for (int k = 0; k < DM_PIX; k++) err = fmax(err, fabs(est[k] - x[k]));
            EXPECT(err < 2e-3, "ddpm x0_hat(true eps) = x (err %g at t=%d)", err, ti);
        }
    }
    EXPECT(dropped > 140 && dropped < 260, "p_uncond 0.1: %d of 2000 dropped", dropped);
    int covered = 0;
    for (int i = 0; i < DDPM_T; i++) covered += seen[i] > 0;
    EXPECT(covered > 280, "timesteps cover 0..299 (%d distinct)", covered);
    /* The same key gives the same example; another step another one. */
    float z2[DM_PIX], t2;
    diffusion_example(&c, &s, z, tg, &t, &label, x, 7, 3, 11);
    diffusion_example(&c, &s, z2, tg, &t2, &label, x, 7, 3, 11);
    EXPECT(memcmp(z, z2, sizeof z) == 0 && t == t2, "examples are keyed, not streamed");
    diffusion_example(&c, &s, z2, tg, &t2, &label, x, 7, 4, 11);
    EXPECT(memcmp(z, z2, sizeof z) != 0, "another step, another example");

    c.objective = OBJ_FLOW;
    c.conditioning = CONDITIONING_TIME;
    diffusion_example(&c, &s, z, tg, &t, &label, x, 7, 3, 5);
    EXPECT(t >= 0 && t < 1 && label == -1, "flow: t in [0,1), no label for time models");
    diffusion_x0_hat(&c, &s, est, z, tg, t, DM_PIX);
    double err = 0;
    for (int k = 0; k < DM_PIX; k++) err = fmax(err, fabs(est[k] - x[k]));
    EXPECT(err < 1e-5, "flow: x_t + (1-t) u = x (err %g)", err);
    EXPECT(solver_steps(OBJ_FLOW, 0, 0) == 50, "flow time model samples with 50 steps");
    EXPECT(solver_steps(OBJ_FLOW, 1, 0) == 20, "flow class model samples with 20 steps");
    EXPECT(solver_steps(OBJ_DDPM, 1, 0) == 10,
           "a class DDPM samples with 10 steps (docs/sampling.md, Defaults)");
    EXPECT(solver_steps(OBJ_DDPM, 0, 0) == 10,
           "a time DDPM samples with 10 steps (docs/sampling.md, Defaults)");
    EXPECT(solver_steps(OBJ_DDPM, 1, 20) == 20, "sample_steps wins over the default");
}

int main(void) {
    test_schedule();
    test_steps();
    test_examples();
    return test_finish("test_diffusion");
}
