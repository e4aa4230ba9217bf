/*
 * fault-pkcs11: a PKCS#11 module that forwards to a real one (SoftHSM2 by default) and injects
 * faults at the PKCS#11 boundary, below Strata's code. Point strata.json "token.module" at the
 * built library and set:
 *
 *   STRATA_FAULT_PKCS11_MODULE   the real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   STRATA_FAULT_PKCS11_CONTROL  a control file, re-read whenever its mtime, size or inode changes
 *   STRATA_FAULT_PKCS11_LOG      optional: one line appended per injected fault
 *
 * Control file, one directive per line (a new file replaces every directive; counters restart):
 *   off                       no faults
 *   ops C_Decrypt,C_Encrypt   count and affect only these calls (default: every wrapped call)
 *   fail N [CKR_NAME]         the Nth counted call from now fails (default CKR_DEVICE_ERROR)
 *   fail-every K [CKR_NAME]   every Kth counted call fails
 *   stall MS [COUNT]          the next COUNT counted calls (default: all) sleep MS first
 *
 * Only the calls Strata makes on its I/O and key paths are wrapped; C_Initialize, C_Finalize,
 * slot and token info, C_CloseSession and C_FindObjectsFinal pass through untouched.
 * Build: scripts/faults/pkcs11-fault/build.sh.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <pkcs11/pkcs11.h>

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define MAX_OPS 32

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST wrapped;

/* The parsed control file and the counter of calls since it was read. */
static struct {
  struct stat seen;
  int have_seen;
  char ops[MAX_OPS][40];
  int n_ops;
  unsigned long fail_at, fail_every, stall_ms;
  long stall_count; /* -1: every call */
  CK_RV fail_rv, every_rv;
  unsigned long calls;
} ctl;

static const struct { const char *name; CK_RV rv; } CKR[] = {
  { "CKR_DEVICE_ERROR", CKR_DEVICE_ERROR }, { "CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED },
  { "CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY }, { "CKR_GENERAL_ERROR", CKR_GENERAL_ERROR },
  { "CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED }, { "CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT },
  { "CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID }, { "CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN },
};

static CK_RV rv_of (const char *name) {
  for (size_t i = 0; i < sizeof CKR / sizeof CKR[0]; i++) if (strcmp(CKR[i].name, name) == 0) return CKR[i].rv;
  return CKR_DEVICE_ERROR;
}

static const char *name_of (CK_RV rv) {
  for (size_t i = 0; i < sizeof CKR / sizeof CKR[0]; i++) if (CKR[i].rv == rv) return CKR[i].name;
  return "CKR_?";
}

static void parse_line (char *line) {
  char word[32] = "", arg1[512] = "", arg2[64] = "";
  if (sscanf(line, "%31s %511s %63s", word, arg1, arg2) < 1) return;
  if (strcmp(word, "fail") == 0) { ctl.fail_at = strtoul(arg1, NULL, 10); ctl.fail_rv = rv_of(arg2[0] ? arg2 : "CKR_DEVICE_ERROR"); }
  else if (strcmp(word, "fail-every") == 0) { ctl.fail_every = strtoul(arg1, NULL, 10); ctl.every_rv = rv_of(arg2[0] ? arg2 : "CKR_DEVICE_ERROR"); }
  else if (strcmp(word, "stall") == 0) { ctl.stall_ms = strtoul(arg1, NULL, 10); ctl.stall_count = arg2[0] ? strtol(arg2, NULL, 10) : -1; }
  else if (strcmp(word, "ops") == 0) {
    for (char *save = NULL, *op = strtok_r(arg1, ",", &save); op != NULL && ctl.n_ops < MAX_OPS; op = strtok_r(NULL, ",", &save)) {
      snprintf(ctl.ops[ctl.n_ops++], sizeof ctl.ops[0], "%s", op);
    }
  }
}

/* Re-read the control file if it changed (called with the lock held). A missing file: no faults. */
static void refresh (void) {
  const char *path = getenv("STRATA_FAULT_PKCS11_CONTROL");
  struct stat st;
  if (path == NULL || stat(path, &st) != 0) { memset(&st, 0, sizeof st); }
  if (ctl.have_seen && st.st_ino == ctl.seen.st_ino && st.st_size == ctl.seen.st_size &&
      st.st_mtim.tv_sec == ctl.seen.st_mtim.tv_sec && st.st_mtim.tv_nsec == ctl.seen.st_mtim.tv_nsec) return;
  memset(&ctl, 0, sizeof ctl);
  ctl.seen = st;
  ctl.have_seen = 1;
  FILE *f = path == NULL ? NULL : fopen(path, "r");
  if (f == NULL) return;
  char line[640];
  while (fgets(line, sizeof line, f) != NULL) parse_line(line);
  fclose(f);
}

static void note (const char *what, const char *fn, unsigned long n, const char *detail) {
  const char *path = getenv("STRATA_FAULT_PKCS11_LOG");
  FILE *f = path == NULL ? NULL : fopen(path, "a");
  if (f == NULL) return;
  fprintf(f, "%s %s #%lu %s\n", what, fn, n, detail);
  fclose(f);
}

static int counted (const char *fn) {
  if (ctl.n_ops == 0) return 1;
  for (int i = 0; i < ctl.n_ops; i++) if (strcmp(ctl.ops[i], fn) == 0) return 1;
  return 0;
}

/* Decide this call's fate: stall (outside the lock), then CKR_OK to forward or a failure. */
static CK_RV inject (const char *fn) {
  unsigned long stall = 0, n = 0;
  CK_RV rv = CKR_OK;
  pthread_mutex_lock(&lock);
  refresh();
  if (counted(fn)) {
    n = ++ctl.calls;
    if (ctl.stall_ms > 0 && ctl.stall_count != 0) {
      stall = ctl.stall_ms;
      if (ctl.stall_count > 0) ctl.stall_count--;
    }
    if (ctl.fail_at > 0 && n == ctl.fail_at) rv = ctl.fail_rv;
    else if (ctl.fail_every > 0 && n % ctl.fail_every == 0) rv = ctl.every_rv;
  }
  pthread_mutex_unlock(&lock);
  if (stall > 0) {
    char ms[32];
    snprintf(ms, sizeof ms, "%lums", stall);
    note("stall", fn, n, ms);
    struct timespec ts = { (time_t)(stall / 1000), (long)(stall % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {}
  }
  if (rv != CKR_OK) note("fail", fn, n, name_of(rv));
  return rv;
}

#define WRAP(fn, params, args) \
  static CK_RV w_##fn params { CK_RV rv = inject(#fn); return rv != CKR_OK ? rv : real->fn args; }

WRAP(C_OpenSession, (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e), (a, b, c, d, e))
WRAP(C_Login, (CK_SESSION_HANDLE a, CK_USER_TYPE b, CK_UTF8CHAR_PTR c, CK_ULONG d), (a, b, c, d))
WRAP(C_FindObjectsInit, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (a, b, c))
WRAP(C_FindObjects, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c, CK_ULONG_PTR d), (a, b, c, d))
WRAP(C_EncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
WRAP(C_Encrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WRAP(C_DecryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
WRAP(C_Decrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WRAP(C_WrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f), (a, b, c, d, e, f))
WRAP(C_UnwrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))
WRAP(C_GenerateKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
WRAP(C_GenerateKeyPair, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h), (a, b, c, d, e, f, g, h))
WRAP(C_GetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
WRAP(C_SetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
WRAP(C_DestroyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
WRAP(C_GenerateRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))

/* Load the real module once; its function list, copied, with our wrappers in place. */
static CK_RV load (void) {
  if (real != NULL) return CKR_OK;
  const char *path = getenv("STRATA_FAULT_PKCS11_MODULE");
  void *lib = dlopen(path != NULL && path[0] != '\0' ? path : DEFAULT_MODULE, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) { fprintf(stderr, "fault-pkcs11: %s\n", dlerror()); return CKR_GENERAL_ERROR; }
  CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
  if (get == NULL) return CKR_GENERAL_ERROR;
  CK_FUNCTION_LIST_PTR list = NULL;
  CK_RV rv = get(&list);
  if (rv != CKR_OK) return rv;
  wrapped = *list;
  wrapped.C_GetFunctionList = C_GetFunctionList;
#define USE(fn) wrapped.fn = w_##fn
  USE(C_OpenSession); USE(C_Login); USE(C_FindObjectsInit); USE(C_FindObjects);
  USE(C_EncryptInit); USE(C_Encrypt); USE(C_DecryptInit); USE(C_Decrypt);
  USE(C_WrapKey); USE(C_UnwrapKey); USE(C_GenerateKey); USE(C_GenerateKeyPair);
  USE(C_GetAttributeValue); USE(C_SetAttributeValue); USE(C_DestroyObject); USE(C_GenerateRandom);
  real = list;
  return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList (CK_FUNCTION_LIST_PTR_PTR out) {
  if (out == NULL) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&lock);
  CK_RV rv = load();
  pthread_mutex_unlock(&lock);
  if (rv == CKR_OK) *out = &wrapped;
  return rv;
}
