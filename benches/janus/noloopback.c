/*
 * LD_PRELOAD shim for benchmarking Janus on loopback.
 *
 * Janus 1.1.2 (and libnice under it) skip interfaces flagged IFF_LOOPBACK when they gather
 * ICE host candidates, so on a machine where the load generator talks to it over 127.0.0.1
 * it offers no usable candidate. This wraps getifaddrs() and clears IFF_LOOPBACK in every
 * entry it returns; together with `ice_enforce_list = "lo"` Janus then gathers exactly one
 * host candidate, 127.0.0.1, like the kaskade node under the same benchmark.
 *
 * Build: gcc -shared -fPIC -O2 -o noloopback.so noloopback.c -ldl
 * Use:   LD_PRELOAD=/path/noloopback.so janus ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>

typedef int (*getifaddrs_fn)(struct ifaddrs **);

int getifaddrs(struct ifaddrs **ifap) {
	static getifaddrs_fn real = NULL;
	if (real == NULL) {
		real = (getifaddrs_fn)dlsym(RTLD_NEXT, "getifaddrs");
		if (real == NULL) {
			errno = ENOSYS;
			return -1;
		}
	}
	int rc = real(ifap);
	if (rc != 0 || ifap == NULL)
		return rc;
	for (struct ifaddrs *ifa = *ifap; ifa != NULL; ifa = ifa->ifa_next)
		ifa->ifa_flags &= ~(unsigned int)IFF_LOOPBACK;
	return rc;
}
