/* score_cmd.c: `diffmpi score` - the judge's figures (score.h) for a file
 * of samples, printed one per line and written to SCORE.h5. Every rank
 * reads the inputs; the images are classified spread over the ranks. */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffmpi/autotune.h"
#include "diffmpi/data.h"
#include "diffmpi/gemm.h"
#include "diffmpi/h5util.h"
#include "diffmpi/score.h"
#include "diffmpi/score_cmd.h"

#define MAX_SETS 64

/* One set of images to score: the whole file, or one epoch of a run. */
typedef struct {
    char group[64];     /* "" (the file's root) or "epoch_0005" */
    int n;
    float *images;      /* [n][784] */
    int32_t *labels;    /* [n], -1 = none */
    float *feats, *logits; /* --features: the judge's [n][F] and [n][K] */
} image_set;

/* [N,28,28] float images (and [N] integer labels, if present) below g. */
static dm_status read_set(hid_t f, const char *file, const char *g, image_set *s) {
    char name[128];
    int nd;
    hsize_t d[4];
    H5T_class_t cls;
    size_t tsize;
    snprintf(name, sizeof name, "%s/images", g);
    DM_TRY(h5_shape(f, file, name, &nd, d, &cls, &tsize));
    if (nd != 3 || d[1] != DM_IMG || d[2] != DM_IMG || cls != H5T_FLOAT || d[0] < 1 ||
        d[0] > (1u << 24)) {
        dm_error("%s: %s must be a float array of shape [N,28,28] (images in [0,1])", file,
                 name);
        return DM_EUSAGE;
    }
    s->n = (int)d[0];
    s->images = dm_malloc(sizeof(float) * (size_t)s->n * DM_PIX);
    s->labels = dm_malloc(sizeof(int32_t) * (size_t)s->n);
    DM_TRY(h5_read_any(f, file, name, H5T_NATIVE_FLOAT, s->images));
    for (int i = 0; i < s->n; i++) s->labels[i] = -1;
    snprintf(name, sizeof name, "%s/labels", g);
    if (h5_exists(f, name) <= 0) return DM_OK;
    DM_TRY(h5_shape(f, file, name, &nd, d, &cls, &tsize));
    if (nd != 1 || (int)d[0] != s->n || cls != H5T_INTEGER) {
        dm_error("%s: %s must be an integer array of shape [%d]", file, name, s->n);
        return DM_EUSAGE;
    }
    DM_TRY(h5_read_any(f, file, name, H5T_NATIVE_INT32, s->labels));
    for (int i = 0; i < s->n; i++)
        if (s->labels[i] < -1 || s->labels[i] > 9) {
            dm_error("%s: %s[%d] = %d is outside -1..9", file, name, i, s->labels[i]);
            return DM_EUSAGE;
        }
    return DM_OK;
}

typedef struct {
    int nsets;
    image_set sets[MAX_SETS];
} set_list;

static herr_t add_epoch(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    set_list *l = data;
    int e;
    char tail;
    if (sscanf(name, "epoch_%d%c", &e, &tail) != 1 || l->nsets >= MAX_SETS) return 0;
    snprintf(l->sets[l->nsets++].group, sizeof l->sets[0].group, "%s", name);
    return 0;
}

/* The sets of a samples file: /images (a `sample` file), or every
 * /samples/epoch_NNNN group of a run's samples.h5 (or just --epoch's). */
static dm_status read_samples(const char *file, int epoch, set_list *l) {
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        dm_error("%s: cannot open the samples file (not HDF5, or missing)", file);
        return DM_EIO;
    }
    dm_status st = DM_OK;
    if (h5_exists(f, "/images") > 0) {
        if (epoch > 0) {
            dm_error("--epoch: %s holds one set of images (/images), not a run's epochs", file);
            st = DM_EUSAGE;
        } else {
            l->nsets = 1;
            st = read_set(f, file, "", &l->sets[0]);
        }
    } else if (h5_exists(f, "/samples") > 0) {
        hid_t g = H5Gopen2(f, "/samples", H5P_DEFAULT);
        if (g < 0 || H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, add_epoch, l) < 0) {
            dm_error("%s: cannot list /samples", file);
            st = DM_EIO;
        }
        if (g >= 0) H5Gclose(g);
        if (st == DM_OK && epoch > 0) {
            char want[64];
            snprintf(want, sizeof want, "epoch_%04d", epoch);
            int k = -1;
            for (int i = 0; i < l->nsets; i++)
                if (strcmp(l->sets[i].group, want) == 0) k = i;
            if (k < 0) {
                dm_error("--epoch %d: %s has no /samples/%s", epoch, file, want);
                st = DM_EUSAGE;
            } else {
                l->sets[0] = l->sets[k];
                l->nsets = 1;
            }
        }
        if (st == DM_OK && l->nsets == 0) {
            dm_error("%s: /samples holds no epoch_NNNN group", file);
            st = DM_EUSAGE;
        }
        for (int i = 0; st == DM_OK && i < l->nsets; i++) {
            char g2[96];
            snprintf(g2, sizeof g2, "/samples/%s", l->sets[i].group);
            st = read_set(f, file, g2, &l->sets[i]);
        }
    } else {
        dm_error("%s: no /images [N,28,28] (as `diffmpi sample` writes) and no /samples "
                 "groups (a run's samples.h5)", file);
        st = DM_EUSAGE;
    }
    return h5_close_file(f, file, "samples file", st);
}

static void free_sets(set_list *l) {
    for (int i = 0; i < l->nsets; i++) {
        image_set *t = &l->sets[i];
        free(t->images), free(t->labels), free(t->feats), free(t->logits);
    }
    l->nsets = 0;
}

/* The reference images: --ref FILE's /images, or the MNIST test set. */
static dm_status read_reference(const score_args *a, const dm_judge *j, image_set *ref,
                                char *desc, size_t size) {
    if (a->ref) {
        hid_t f = H5Fopen(a->ref, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) {
            dm_error("%s: cannot open the reference file (not HDF5, or missing)", a->ref);
            return DM_EIO;
        }
        DM_TRY(h5_close_file(f, a->ref, "reference file", read_set(f, a->ref, "", ref)));
        snprintf(desc, size, "%s", a->ref);
        return DM_OK;
    }
    const char *dir = a->data ? a->data : j->cfg.data_dir;
    dm_dataset d;
    DM_TRY(data_load(&d, dir, "t10k", 0));
    ref->n = d.n;
    ref->images = d.images;
    ref->labels = NULL;
    free(d.labels);
    snprintf(desc, size, "the MNIST test set (%s)", dir);
    return DM_OK;
}

static void print_score(const char *pre, const dm_score *s, int F) {
    if (s->conditioned) {
        int right = (int)lround(s->acc * s->conditioned);
        printf("%saccuracy = %.4f (%d of %d images with an intended digit)\n", pre, s->acc,
               right, s->conditioned);
        printf("%saccuracy_per_digit =", pre);
        for (int d = 0; d < 10; d++)
            printf(s->n_digit[d] ? " %.2f" : " -", s->acc_digit[d]);
        printf("\n%sconfidence = %.4f\n", pre, s->conf);
    }
    printf("%sfrechet_distance = %.4f (judge features, %d-dim; not Inception's FID)\n", pre,
           s->fd, F);
    printf("%sentropy = %.4f (10 digits evenly: %.4f)\n", pre, s->entropy, log(10.0));
    printf("%shistogram =", pre);
    for (int d = 0; d < 10; d++) printf(" %.3f", s->hist[d]);
    printf("\n");
}

/* One set's figures into an open group (write_group closes it). */
static dm_status write_fields(hid_t grp, const char *file, const dm_score *s,
                              const image_set *set, int F, int K) {
    hsize_t ten = 10;
    double nd[10];
    for (int d = 0; d < 10; d++) nd[d] = s->n_digit[d];
    DM_TRY(h5_attr_i64(grp, file, "n", s->n));
    DM_TRY(h5_attr_i64(grp, file, "conditioned", s->conditioned));
    DM_TRY(h5_attr_f64(grp, file, "accuracy", s->acc));
    DM_TRY(h5_attr_f64(grp, file, "confidence", s->conf));
    DM_TRY(h5_attr_f64(grp, file, "frechet_distance", s->fd));
    DM_TRY(h5_attr_f64(grp, file, "entropy", s->entropy));
    DM_TRY(h5_write_f64(grp, file, "accuracy_per_digit", s->acc_digit, 1, &ten));
    DM_TRY(h5_write_f64(grp, file, "images_per_digit", nd, 1, &ten));
    DM_TRY(h5_write_f64(grp, file, "histogram", s->hist, 1, &ten));
    hsize_t df[2] = {(hsize_t)set->n, (hsize_t)F}, dk[2] = {(hsize_t)set->n, (hsize_t)K};
    hsize_t dn = (hsize_t)set->n;
    if (set->feats) DM_TRY(h5_write_f32(grp, file, "features", set->feats, 2, df));
    if (set->logits) DM_TRY(h5_write_f32(grp, file, "logits", set->logits, 2, dk));
    if (set->feats) DM_TRY(h5_write_i32(grp, file, "labels", set->labels, 1, &dn));
    return DM_OK;
}

static dm_status write_group(hid_t f, const char *file, const char *g, const dm_score *s,
                             const image_set *set, int F, int K) {
    hid_t grp = g[0] ? H5Gcreate2(f, g, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)
                     : H5Gopen2(f, "/", H5P_DEFAULT);
    if (grp < 0) {
        dm_error("%s: cannot create group %s", file, g);
        return DM_EIO;
    }
    dm_status st = write_fields(grp, file, s, set, F, K);
    if (H5Gclose(grp) < 0 && st == DM_OK) {
        dm_error("%s: cannot write group %s", file, g);
        st = DM_EIO;
    }
    return st;
}

static dm_status write_body(hid_t f, const score_args *a, const dm_judge *j,
                            const char *refdesc, const set_list *l, const dm_score *sc,
                            const float *ref_feats) {
    char crc[16];
    snprintf(crc, sizeof crc, "%08x", (unsigned)j->crc);
    DM_TRY(h5_attr_str(f, a->out, "format", "diffmpi-score"));
    DM_TRY(h5_attr_build(f, a->out));
    DM_TRY(h5_attr_str(f, a->out, "judge", a->judge));
    DM_TRY(h5_attr_str(f, a->out, "judge_crc32", crc));
    DM_TRY(h5_attr_str(f, a->out, "samples", a->samples));
    DM_TRY(h5_attr_str(f, a->out, "reference", refdesc));
    DM_TRY(h5_attr_i64(f, a->out, "reference_n", j->ref_n));
    DM_TRY(h5_attr_i64(f, a->out, "feature_dim", j->F));
    if (ref_feats) {
        hsize_t d[2] = {(hsize_t)j->ref_n, (hsize_t)j->F};
        DM_TRY(h5_write_f32(f, a->out, "/reference_features", ref_feats, 2, d));
    }
    for (int i = 0; i < l->nsets; i++)
        DM_TRY(write_group(f, a->out, l->sets[i].group, &sc[i], &l->sets[i], j->F, j->K));
    return DM_OK;
}

static dm_status write_out(const score_args *a, const dm_judge *j, const char *refdesc,
                           const set_list *l, const dm_score *sc, const float *ref_feats) {
    char tmp[4200];
    hid_t f = h5_create_tmp(a->out, tmp, sizeof tmp);
    if (f < 0) return DM_EIO;
    return h5_commit_tmp(f, tmp, a->out, write_body(f, a, j, refdesc, l, sc, ref_feats));
}

/* Read every input on every rank; rank 0 alone prints what failed. */
static dm_status load_inputs(const score_args *a, dm_judge *j, set_list *l, image_set *ref,
                             char *refdesc, size_t size, int rank) {
    dm_status st = judge_open(j, a->judge, a->weights);
    if (st != DM_OK) return st;
    dm_set_quiet(rank != 0);
    st = read_samples(a->samples, a->epoch, l);
    if (st == DM_OK) st = read_reference(a, j, ref, refdesc, size);
    dm_set_quiet(0);
    return dm_agree(st);
}

/* Everything after the inputs are read. Every status here is the job's
 * (the same data on every rank gives the same answer; the writes are
 * broadcast), so a failure returns on every rank at once. */
static dm_status score_sets(const score_args *a, dm_judge *j, set_list *l,
                            const image_set *ref, const char *refdesc, dm_score *sc,
                            float **ref_feats, int rank) {
    dm_precision want = a->precision >= 0 ? (dm_precision)a->precision : j->cfg.precision;
    DM_TRY(autotune_engine(j->cfg.engine, want, j->cfg.threads, rank, &j->prec));
    if (rank == 0) {
        printf("score: judge %s (crc32 %08x, D=%d, %d features, %s weights, %s)\n",
               a->judge, (unsigned)j->crc, j->cfg.hidden, j->F, j->ema ? "EMA" : "raw",
               gemm_describe());
        if (gemm_auto_note()) printf("score: %s\n", gemm_auto_note());
        printf("score: reference features of %d images of %s ...\n", ref->n, refdesc);
        fflush(stdout);
    }
    double t0 = MPI_Wtime();
    dm_set_quiet(rank != 0);
    dm_status st = judge_reference(j, refdesc, ref->images, ref->n);
    dm_set_quiet(0);
    DM_TRY(st);
    if (a->features) {
        *ref_feats = dm_malloc(sizeof(float) * (size_t)ref->n * j->F);
        memcpy(*ref_feats, j->feats, sizeof(float) * (size_t)ref->n * j->F);
    }
    for (int i = 0; i < l->nsets; i++) {
        image_set *t = &l->sets[i];
        char what[4200];
        snprintf(what, sizeof what, "%s%s%s", a->samples, t->group[0] ? ": " : "", t->group);
        dm_set_quiet(rank != 0);
        st = judge_score(j, what, t->images, t->labels, t->n, &sc[i]);
        dm_set_quiet(0);
        DM_TRY(st);
        if (a->features) {
            t->feats = dm_malloc(sizeof(float) * (size_t)t->n * j->F);
            t->logits = dm_malloc(sizeof(float) * (size_t)t->n * j->K);
            memcpy(t->feats, j->feats, sizeof(float) * (size_t)t->n * j->F);
            memcpy(t->logits, j->logits, sizeof(float) * (size_t)t->n * j->K);
        }
        if (rank == 0) {
            char pre[80] = "";
            if (t->group[0]) snprintf(pre, sizeof pre, "%s: ", t->group);
            printf("%s%d images (%d with an intended digit)\n", pre, sc[i].n,
                   sc[i].conditioned);
            print_score(pre, &sc[i], j->F);
            fflush(stdout);
        }
    }
    if (rank == 0) printf("score: %d set(s) scored in %.1f s\n", l->nsets, MPI_Wtime() - t0);
    if (a->out) {
        st = rank == 0 ? write_out(a, j, refdesc, l, sc, *ref_feats) : DM_OK;
        DM_TRY((dm_status)dm_from_rank0((int)st));
        if (rank == 0) printf("wrote %s\n", a->out);
    }
    return DM_OK;
}

int score_run(const score_args *a) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    h5_quiet();
    dm_judge j;
    set_list *l = dm_calloc(1, sizeof *l);
    image_set ref = {0};
    char refdesc[4200] = "";
    memset(&j, 0, sizeof j);
    dm_score *sc = dm_calloc(MAX_SETS, sizeof *sc);
    float *ref_feats = NULL;
    dm_status st = load_inputs(a, &j, l, &ref, refdesc, sizeof refdesc, rank);
    if (st == DM_OK) st = score_sets(a, &j, l, &ref, refdesc, sc, &ref_feats, rank);
    free(sc);
    free(ref_feats);
    free_sets(l);
    free(l);
    free(ref.images), free(ref.labels);
    judge_close(&j);
    gemm_teardown();
    return dm_exit_code(st);
}
