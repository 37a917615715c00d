/* engine.h: the two run-wide choices of how the convolutions' products are
 * computed (config keys `precision` and `engine`; see gemm.h). */
#ifndef DIFFMPI_ENGINE_H
#define DIFFMPI_ENGINE_H

/* DM_PREC_AUTO: bf16 where the engine can run it on this CPU, else fp32
 * (gemm_resolve_precision); resolved before anything runs. */
typedef enum { DM_PREC_FP32, DM_PREC_BF16, DM_PREC_AUTO } dm_precision;
typedef enum { DM_ENGINE_AUTO, DM_ENGINE_OPENBLAS, DM_ENGINE_ONEDNN } dm_engine;
/* Element types of GEMM operands: float, or bfloat16 bits (unsigned short). */
typedef enum { DM_T_F32, DM_T_BF16 } dm_dtype;

/* The names the config keys take ("fp32", "bf16", "auto"; "auto", "openblas",
 * "onednn"); NULL past the last value. */
const char *gemm_precision_name(int p);
const char *gemm_engine_name(int e);

#endif
