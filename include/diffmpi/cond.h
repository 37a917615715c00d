/* cond.h: conditioning of the UNet on a time scalar and a class vector.
 *
 * FCBlock(a, b) = Linear(a, b) -> GELU -> Linear(b, b) maps t [N][1] or a
 * one-hot class c [N][10] (all zeros = "no class") to an embedding e [N][b]
 * that is broadcast over the H x W plane of a CNHW activation u [C][N][HW]:
 *
 *   COND_MIX_ADD    y = u + et            (time only, DDPM)
 *   COND_MIX_MUL    y = u * et            (time only, flow matching)
 *   COND_MIX_FILM   y = ec * u + et       (time and class, both objectives)
 *
 * Backward ADDS into du and OVERWRITES the embedding gradients det, dec
 * ([N][C], per micro-batch).
 */
#ifndef DIFFMPI_COND_H
#define DIFFMPI_COND_H

/* How the embeddings meet the activation; COND_MIX_NONE: an unconditioned
 * model (no conditioning points). */
typedef enum { COND_MIX_NONE, COND_MIX_ADD, COND_MIX_MUL, COND_MIX_FILM } cond_mix;
/* "none", "add", "mul", "film" (the checkpoint attribute cond_mix, and
 * tools/diffmpi_torch.py's names); NULL past the last. */
const char *cond_mix_name(int m);

/* FCBlock forward. in [N][Fin]; h [N][Fout] (fc1 output, kept),
 * g [N][Fout] (GELU(h), kept), e [N][Fout] output.
 * w1 [Fout][Fin], b1 [Fout], w2 [Fout][Fout], b2 [Fout]. */
void fcblock_forward(float *e, float *h, float *g, const float *in,
                     const float *w1, const float *b1, const float *w2,
                     const float *b2, int N, int Fin, int Fout);
/* FCBlock backward from de [N][Fout]: dw1, db1, dw2, db2 OVERWRITTEN; scratch
 * dg, dh [N][Fout]. The input gets no gradient (t and c are data). */
void fcblock_backward(float *dw1, float *db1, float *dw2, float *db2,
                      float *dg, float *dh, const float *de, const float *in,
                      const float *h, const float *g, const float *w2, int N,
                      int Fin, int Fout);

/* y [C][N][HW] from u [C][N][HW] and embeddings et, ec [N][C] (ec unused
 * unless COND_MIX_FILM). y and u must not overlap. */
void cond_forward(float *y, const float *u, const float *et, const float *ec,
                  cond_mix mode, int C, int N, int HW);
/* du (ADDED, may be NULL), det and dec (OVERWRITTEN, dec only for FILM). */
void cond_backward(float *du, float *det, float *dec, const float *dy,
                   const float *u, const float *et, const float *ec,
                   cond_mix mode, int C, int N, int HW);

#endif
