/* A create/write 4 KiB/close/rename/unlink loop over 100 files in a directory (run.sh). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    const char *dir = argv[1];
    long n = atol(argv[2]);
    char a[100][256], b[100][256], block[4096];
    memset(block, 7, sizeof block);
    for (int i = 0; i < 100; i++) { snprintf(a[i], 256, "%s/m-%d", dir, i); snprintf(b[i], 256, "%s/r-%d", dir, i); }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        int k = i % 100;
        int fd = open(a[k], O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0) { perror("create"); return 1; }
        if (write(fd, block, sizeof block) <= 0) { perror("write"); return 1; }
        close(fd);
        if (rename(a[k], b[k])) { perror("rename"); return 1; }
        if (unlink(b[k])) { perror("unlink"); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%ld iterations in %.3f s: %.0f it/s\n", n, s, n / s);
    return 0;
}
