/* nodlclose.c: LD_PRELOADed into sanitizer test runs (tests/run.sh). Keeps every
 * dlopen'd library loaded, so LeakSanitizer can name the module of an allocation
 * made by a plugin (Open MPI's MCA components) when it reports at exit. */

int dlclose(void *handle) { (void)handle; return 0; }
