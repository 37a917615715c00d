/* sampler_cases.c: one step of every sampler of solver.h on fixed inputs,
 * written to an HDF5 file for tests/integration/test_sampler_formulas.py,
 * which recomputes each step from the papers' formulas in NumPy.
 *
 * usage: sampler_cases OUT.h5
 *
 * Each case is a group /case_NN with attributes objective, sampler,
 * spacing, steps, step, eta and the datasets x (the images before the
 * step), out1 and out2 (what the stand-in network returns at its first and
 * second evaluation), z (the step's noise, zeros when the step takes none),
 * prev (the multistep state before the step), x_next (the images after),
 * eval_t (the network time of each evaluation made), eval_x2 (the input of
 * the second evaluation, zeros when there is none) and uses_noise. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "diffmpi/data.h"
#include "diffmpi/h5util.h"
#include "diffmpi/solver.h"

#define N DM_PIX

typedef struct {
    float out1[N], out2[N], x2[N], t[2];
    int calls;
} stand_in;

/* The first evaluation returns out1, the second out2; inputs recorded. */
static void stand_in_eval(void *ctx, float *out, const float *x, float t, int first, int k) {
    stand_in *m = ctx;
    (void)first, (void)k;
    if (m->calls == 1) memcpy(m->x2, x, sizeof m->x2);
    memcpy(out, m->calls == 0 ? m->out1 : m->out2, sizeof m->out1);
    if (m->calls < 2) m->t[m->calls] = t;
    m->calls++;
}

typedef struct {
    dm_objective o;
    dm_sampler s;
    dm_spacing sp;
    int S, i;
    double eta;
} sampler_case;

static const sampler_case cases[] = {
    {OBJ_DDPM, SAMPLER_DDPM, SPACING_UNIFORM, 300, 10, 0},  /* the course's step */
    {OBJ_DDPM, SAMPLER_DDPM, SPACING_UNIFORM, 20, 3, 0},    /* strided: small variance */
    {OBJ_DDPM, SAMPLER_DDPM, SPACING_LOGSNR, 20, 19, 0},    /* into the image */
    {OBJ_DDPM, SAMPLER_DDIM, SPACING_UNIFORM, 15, 4, 0},
    {OBJ_DDPM, SAMPLER_DDIM, SPACING_LOGSNR, 15, 4, 0.5},
    {OBJ_DDPM, SAMPLER_DDIM, SPACING_UNIFORM, 50, 0, 1},
    {OBJ_DDPM, SAMPLER_DDIM, SPACING_UNIFORM, 15, 14, 1},
    {OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_UNIFORM, 12, 0, 0}, /* first: first order */
    {OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_UNIFORM, 12, 5, 0},
    {OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_LOGSNR, 12, 5, 0},
    {OBJ_DDPM, SAMPLER_DPMPP2M, SPACING_UNIFORM, 12, 11, 0}, /* last: first order */
    {OBJ_FLOW, SAMPLER_EULER, SPACING_UNIFORM, 7, 3, 0},
    {OBJ_FLOW, SAMPLER_HEUN, SPACING_UNIFORM, 7, 2, 0},
    {OBJ_FLOW, SAMPLER_HEUN, SPACING_UNIFORM, 7, 6, 0},      /* last: Euler */
    {OBJ_FLOW, SAMPLER_DPMPP2M, SPACING_UNIFORM, 9, 0, 0},
    {OBJ_FLOW, SAMPLER_DPMPP2M, SPACING_UNIFORM, 9, 1, 0},   /* after t = 0 */
    {OBJ_FLOW, SAMPLER_DPMPP2M, SPACING_UNIFORM, 9, 4, 0},
    {OBJ_FLOW, SAMPLER_DPMPP2M, SPACING_UNIFORM, 9, 8, 0},
};

static dm_status write_case(hid_t f, const char *path, int c, const sampler_case *k) {
    static stand_in m;
    static float x[N], x_in[N], z[N], prev[N], prev_in[N], out[N], work[2 * N];
    memset(&m, 0, sizeof m);
    for (int p = 0; p < N; p++) {
        x[p] = x_in[p] = (float)(1.3 * sin(0.11 * p + c));
        m.out1[p] = (float)cos(0.23 * p - c);
        m.out2[p] = (float)(0.8 * sin(0.05 * p + 2.0 * c));
        z[p] = (float)sin(0.71 * p + 0.5 * c);
        prev[p] = prev_in[p] = (float)(0.5 + 0.4 * cos(0.13 * p + c));
    }
    solver_plan pl;
    const char *bad = solver_plan_init(&pl, k->o, k->s, k->sp, k->S, k->eta,
                                       (solver_model){stand_in_eval, &m});
    if (bad) {
        dm_error("case %d: %s", c, bad);
        return DM_EUSAGE;
    }
    int noisy = solver_step_noise(&pl, k->i);
    if (!noisy) memset(z, 0, sizeof z);
    solver_block b = {.x = x, .state = prev, .z = noisy ? z : NULL, .out = out,
                      .work = work, .k = 1};
    solver_step(&pl, k->i, &b);
    solver_plan_free(&pl);
    char name[32];
    snprintf(name, sizeof name, "/case_%02d", c);
    hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return DM_EIO;
    hsize_t n = N, two = 2;
    dm_status st = DM_OK;
    if (st == DM_OK) st = h5_attr_str(g, path, "objective", objective_get(k->o)->name);
    if (st == DM_OK) st = h5_attr_str(g, path, "sampler", solver_name(k->s));
    if (st == DM_OK) st = h5_attr_str(g, path, "spacing", solver_spacing_name(k->sp));
    if (st == DM_OK) st = h5_attr_i64(g, path, "steps", k->S);
    if (st == DM_OK) st = h5_attr_i64(g, path, "step", k->i);
    if (st == DM_OK) st = h5_attr_f64(g, path, "eta", k->eta);
    if (st == DM_OK) st = h5_attr_i64(g, path, "uses_noise", noisy);
    if (st == DM_OK) st = h5_attr_i64(g, path, "evals", m.calls);
    if (st == DM_OK) st = h5_write_f32(g, path, "x", x_in, 1, &n);
    if (st == DM_OK) st = h5_write_f32(g, path, "out1", m.out1, 1, &n);
    if (st == DM_OK) st = h5_write_f32(g, path, "out2", m.out2, 1, &n);
    if (st == DM_OK) st = h5_write_f32(g, path, "z", z, 1, &n);
    if (st == DM_OK) st = h5_write_f32(g, path, "prev", prev_in, 1, &n);
    if (st == DM_OK) st = h5_write_f32(g, path, "x_next", x, 1, &n);
    if (st == DM_OK) st = h5_write_f32(g, path, "eval_x2", m.x2, 1, &n);
    if (st == DM_OK) st = h5_write_f32(g, path, "eval_t", m.t, 1, &two);
    if (H5Gclose(g) < 0 && st == DM_OK) st = DM_EIO;
    return st;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: sampler_cases OUT.h5\n");
        return 2;
    }
    hid_t f = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s: cannot create", argv[1]);
        return 1;
    }
    dm_status st = DM_OK;
    for (int c = 0; st == DM_OK && c < (int)(sizeof cases / sizeof cases[0]); c++)
        st = write_case(f, argv[1], c, &cases[c]);
    st = h5_close_file(f, argv[1], "cases file", st);
    return st == DM_OK ? 0 : 1;
}
