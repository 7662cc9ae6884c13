/* A stand-in for bcryptprimitives.dll, which Debian 12's Wine 8 lacks: Rust's std (1.78 and
 * later) gets its random bytes from ProcessPrng there, and a Windows test binary without it
 * does not start. This exports ProcessPrng and fills the buffer with RtlGenRandom (advapi32's
 * SystemFunction036), which Wine has. Built with mingw and placed beside the test .exe files
 * by .ci/wine-tests; never shipped. */
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    /* RtlGenRandom takes a ULONG length: feed it in chunks. */
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
