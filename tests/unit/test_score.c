/* test_score.c: the statistics behind `diffmpi score` against closed forms
 * (the integration test checks them against SciPy on real features):
 * feature_stats' mean and 1/(n-1) covariance, the Frechet distance of
 * commuting covariances (sum (sqrt a - sqrt b)^2), of a rotated pair, of
 * identical Gaussians (0), its symmetry, and the EMA decay schedule. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/adam.h"
#include "diffmpi/rng.h"
#include "diffmpi/score.h"
#include "test_util.h"

enum { F = 6 };

static void test_stats(void) {
    enum { N = 5, G = 3 };
    const float x[N * G] = {1, 2, 0, 3, 2, 1, 5, 2, 2, 7, 2, 3, 9, 2, 4};
    double mu[G], cov[G * G];
    feature_stats(x, N, G, mu, cov);
    EXPECT_CLOSE(mu[0], 5.0, 1e-12, 0, "mean of column 0");
    EXPECT_CLOSE(mu[1], 2.0, 1e-12, 0, "mean of column 1");
    EXPECT_CLOSE(mu[2], 2.0, 1e-12, 0, "mean of column 2");
    /* column 0: 1,3,5,7,9 -> var 10; column 1 constant; column 2: 0..4 -> 2.5;
     * cov(0,2) = sum (x0-5)(x2-2)/4 = (8+2+0+2+8)/4 = 5 */
    EXPECT_CLOSE(cov[0], 10.0, 1e-12, 0, "variance (1/(n-1))");
    EXPECT_CLOSE(cov[1 * G + 1], 0.0, 1e-12, 0, "variance of a constant");
    EXPECT_CLOSE(cov[2 * G + 2], 2.5, 1e-12, 0, "variance of column 2");
    EXPECT_CLOSE(cov[0 * G + 2], 5.0, 1e-12, 0, "covariance (0,2)");
    EXPECT(cov[2 * G + 0] == cov[0 * G + 2], "covariance symmetric");
}

/* c = R diag(d) R^T for a rotation R in the plane of axes (p, q). */
static void rotated(double *c, const double *d, int p, int q, double angle) {
    double r[F * F] = {0};
    for (int i = 0; i < F; i++) r[i * F + i] = 1;
    r[p * F + p] = r[q * F + q] = cos(angle);
    r[p * F + q] = -sin(angle), r[q * F + p] = sin(angle);
    for (int i = 0; i < F; i++)
        for (int j = 0; j < F; j++) {
            double s = 0;
            for (int k = 0; k < F; k++) s += r[i * F + k] * d[k] * r[j * F + k];
            c[i * F + j] = s;
        }
}

static void test_frechet(void) {
    double mu1[F], mu2[F], a[F], b[F], c1[F * F] = {0}, c2[F * F] = {0};
    double want = 0;
    for (int i = 0; i < F; i++) {
        mu1[i] = 0.3 * i, mu2[i] = 0.3 * i + (i == 2 ? 1.5 : 0.0);
        a[i] = 0.5 + i, b[i] = 2.0 + 0.25 * i;
        c1[i * F + i] = a[i], c2[i * F + i] = b[i];
        want += (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
    }
    want += 1.5 * 1.5;
    double got = frechet_distance(mu1, c1, mu2, c2, F);
    EXPECT_CLOSE(got, want, 1e-10, 1e-10, "Frechet distance, diagonal covariances");
    EXPECT_CLOSE(frechet_distance(mu2, c2, mu1, c1, F), want, 1e-10, 1e-10,
                 "Frechet distance is symmetric");
    EXPECT_CLOSE(frechet_distance(mu1, c1, mu1, c1, F), 0.0, 1e-9, 0,
                 "Frechet distance of a Gaussian to itself");
    /* Both rotated alike: the distance does not change. */
    double r1[F * F], r2[F * F];
    rotated(r1, a, 1, 4, 0.7);
    rotated(r2, b, 1, 4, 0.7);
    EXPECT_CLOSE(frechet_distance(mu1, r1, mu2, r2, F), want, 1e-9, 1e-9,
                 "Frechet distance, jointly rotated covariances");
    /* Only one rotated (non-commuting): against 2x2 closed form on (1,4):
     * tr sqrt(C1^1/2 C2 C1^1/2) computed here by the same identity in
     * closed form for 2x2, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)). */
    rotated(r2, b, 1, 4, 0.7);
    double m11, m12, m22;
    {
        /* C1 is diagonal: C1^1/2 C2 C1^1/2 restricted to axes 1, 4 */
        double s1 = sqrt(a[1]), s4 = sqrt(a[4]);
        m11 = s1 * r2[1 * F + 1] * s1, m22 = s4 * r2[4 * F + 4] * s4;
        m12 = s1 * r2[1 * F + 4] * s4;
    }
    double tr2 = sqrt(m11 + m22 + 2 * sqrt(m11 * m22 - m12 * m12));
    double w2 = 1.5 * 1.5;
    for (int i = 0; i < F; i++) {
        if (i == 1 || i == 4) continue;
        w2 += (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
    }
    w2 += a[1] + a[4] + r2[1 * F + 1] + r2[4 * F + 4] - 2 * tr2;
    EXPECT_CLOSE(frechet_distance(mu1, c1, mu2, r2, F), w2, 1e-9, 1e-9,
                 "Frechet distance, non-commuting covariances (2x2 closed form)");
}

static void test_nonfinite(void) {
    float x[5] = {0, 1, 2, 3, 4};
    EXPECT(first_nonfinite(x, 5) == -1, "all finite");
    x[3] = NAN;
    EXPECT(first_nonfinite(x, 5) == 3, "NaN found at 3");
    x[1] = INFINITY;
    EXPECT(first_nonfinite(x, 5) == 1, "Inf found first at 1");
}

static void test_ema(void) {
    EXPECT_CLOSE(ema_decay_at(0.999, 1), 2.0 / 11.0, 1e-15, 0, "EMA decay at step 1");
    EXPECT_CLOSE(ema_decay_at(0.999, 10000), 0.999, 1e-15, 0, "EMA decay capped");
    float avg[3] = {1, 2, 3};
    const float x[3] = {3, 2, 1};
    ema_update(avg, x, 3, 0.75);
    EXPECT(avg[0] == 1.5f && avg[1] == 2.0f && avg[2] == 2.5f, "EMA update 0.75 avg + 0.25 x");
}

int main(void) {
    test_stats();
    test_frechet();
    test_nonfinite();
    test_ema();
    return test_finish("test_score");
}
