/* The parts of the CUDA driver API that cctrace's C helpers (the bridge emulator, the driver interposer)
 * use, declared once, so that no CUDA headers are needed to build them. Layouts follow cuda.h. */
#ifndef CCTRACE_CUDA_DRIVER_H
#define CCTRACE_CUDA_DRIVER_H
#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;
typedef void *CUstream, *CUevent, *CUcontext, *CUgraph, *CUgraphExec, *CUgraphNode, *CUmemoryPool;

/* CUDA_MEMCPY2D: a 2D copy's parameters */
typedef struct {
    size_t srcXInBytes, srcY;
    int srcMemoryType;
    const void *srcHost;
    CUdeviceptr srcDevice;
    void *srcArray;
    size_t srcPitch;
    size_t dstXInBytes, dstY;
    int dstMemoryType;
    void *dstHost;
    CUdeviceptr dstDevice;
    void *dstArray;
    size_t dstPitch;
    size_t WidthInBytes, Height;
} CUDA_MEMCPY2D;

/* CUDA_MEMCPY3D: a 3D copy's parameters, and those of a graph's memcpy node */
typedef struct {
    size_t srcXInBytes, srcY, srcZ, srcLOD;
    int srcMemoryType;
    const void *srcHost;
    CUdeviceptr srcDevice;
    void *srcArray;
    void *reserved0;
    size_t srcPitch, srcHeight;
    size_t dstXInBytes, dstY, dstZ, dstLOD;
    int dstMemoryType;
    void *dstHost;
    CUdeviceptr dstDevice;
    void *dstArray;
    void *reserved1;
    size_t dstPitch, dstHeight;
    size_t WidthInBytes, Height, Depth;
} CUDA_MEMCPY3D;

/* CUDA_MEMSET_NODE_PARAMS: a graph's memset node */
typedef struct {
    CUdeviceptr dst;
    size_t pitch;
    unsigned int value, elementSize;
    size_t width, height;
} CUDA_MEMSET_NODE_PARAMS;

#endif
