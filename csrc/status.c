/* status.c - names and sentences for status codes, the build's version. */
#include "internal.h"

#ifndef DPDPU_VERSION_STR
#error "DPDPU_VERSION_STR must be defined by the build"
#endif

const char *dpdpu_version(void)
{
    return DPDPU_VERSION_STR;
}

const char *dpdpu_status_name(int status)
{
    switch (status) {
    case DPDPU_OK: return "OK";
    case DPDPU_ERR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case DPDPU_ERR_NO_MEMORY: return "NO_MEMORY";
    case DPDPU_ERR_NOT_SUPPORTED: return "NOT_SUPPORTED";
    case DPDPU_ERR_TOO_LARGE: return "TOO_LARGE";
    case DPDPU_ERR_NO_DEVICE_MEMORY: return "NO_DEVICE_MEMORY";
    case DPDPU_ERR_CORRUPT_DATA: return "CORRUPT_DATA";
    case DPDPU_ERR_TRUNCATED_DATA: return "TRUNCATED_DATA";
    case DPDPU_ERR_BUFFER_TOO_SMALL: return "BUFFER_TOO_SMALL";
    case DPDPU_ERR_UNKNOWN_OP: return "UNKNOWN_OP";
    case DPDPU_ERR_SHUTDOWN: return "SHUTDOWN";
    case DPDPU_ERR_AGAIN: return "AGAIN";
    case DPDPU_ERR_TIMEOUT: return "TIMEOUT";
    case DPDPU_ERR_CALLBACK: return "CALLBACK";
    case DPDPU_ERR_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case DPDPU_ERR_IN_USE: return "IN_USE";
    case DPDPU_ERR_INTERNAL: return "INTERNAL";
    default: return "UNKNOWN_STATUS";
    }
}

const char *dpdpu_status_describe(int status)
{
    switch (status) {
    case DPDPU_OK: return "success";
    case DPDPU_ERR_INVALID_ARGUMENT: return "invalid argument";
    case DPDPU_ERR_NO_MEMORY: return "host memory allocation failed";
    case DPDPU_ERR_NOT_SUPPORTED: return "the engine does not support this operation";
    case DPDPU_ERR_TOO_LARGE: return "the job exceeds the engine's maximum job size";
    case DPDPU_ERR_NO_DEVICE_MEMORY: return "not enough device memory";
    case DPDPU_ERR_CORRUPT_DATA: return "the input is not a valid compressed stream";
    case DPDPU_ERR_TRUNCATED_DATA: return "the compressed stream ends early (truncated)";
    case DPDPU_ERR_BUFFER_TOO_SMALL: return "the destination buffer is too small";
    case DPDPU_ERR_UNKNOWN_OP: return "unknown operation";
    case DPDPU_ERR_SHUTDOWN: return "the device is shutting down";
    case DPDPU_ERR_AGAIN: return "the engine queue is full; try again";
    case DPDPU_ERR_TIMEOUT: return "timed out";
    case DPDPU_ERR_CALLBACK: return "the callback reported a failure";
    case DPDPU_ERR_OUT_OF_RANGE: return "the buffer lies outside its memory map";
    case DPDPU_ERR_IN_USE: return "the object is still in use by submitted tasks";
    case DPDPU_ERR_INTERNAL: return "internal error in the dpdpu core";
    default: return "unknown status code";
    }
}
