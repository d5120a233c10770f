/* Closed-loop HTTP/1.1 load generator for bench/bench_serve.py.

   The Python client (one thread per connection, http.client) spends about as much CPU on a
   request as the server does; on a 2-core machine that it shares with the server, the client
   then sets the figure. This one costs a few microseconds a request. Each of CLIENTS threads
   holds one keep-alive connection to 127.0.0.1:PORT and sends the next GET as soon as the last
   answer is read, for SECONDS seconds, taking the request paths (one per line of PATHS, in
   turn) from its own offset.

   Output on stdout: "requests errors wall_seconds" on the first line, then one latency in
   microseconds per successful request (status 200).

       cc -O2 -pthread -o loadgen bench/loadgen.c
       ./loadgen PORT SECONDS CLIENTS PATHS
*/
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port, clients, n_paths;
static double seconds, stop_at;
static char **paths;

typedef struct {
  int offset;
  long done, errors, capacity;
  unsigned *latency_us;
} Client;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int connect_local(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* One request and its whole answer; the status, or -1 when the connection failed. */
static int exchange(int fd, const char *path) {
  char buf[65536];
  int len = snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
  if (write(fd, buf, len) != len) return -1;
  long have = 0, body = -1, need = -1;
  int status = -1;
  for (;;) {
    ssize_t got = read(fd, buf + have, sizeof buf - 1 - have);
    if (got <= 0) return -1;
    have += got;
    buf[have] = 0;
    if (body < 0) {
      char *end = strstr(buf, "\r\n\r\n");
      if (!end) continue;
      body = end + 4 - buf;
      status = atoi(buf + 9); /* "HTTP/1.1 200 OK" */
      char *length = strcasestr(buf, "\r\ncontent-length:");
      if (!length || length > end) return -1; /* the service always sends a length */
      need = body + atol(length + 17);
    }
    if (have >= need) return status;
    if (need >= (long)sizeof buf) return -1;
  }
}

static void *run(void *arg) {
  Client *c = arg;
  int fd = connect_local();
  for (long n = c->offset; now() < stop_at; n += clients) {
    double begin = now();
    int status = fd < 0 ? -1 : exchange(fd, paths[n % n_paths]);
    if (status == 200) {
      if (c->done == c->capacity) {
        c->capacity = 2 * c->capacity + 1024;
        c->latency_us = realloc(c->latency_us, c->capacity * sizeof *c->latency_us);
      }
      c->latency_us[c->done++] = (unsigned)((now() - begin) * 1e6);
    } else {
      c->errors++;
      if (status < 0) { /* a broken connection: open another */
        if (fd >= 0) close(fd);
        fd = connect_local();
      }
    }
  }
  if (fd >= 0) close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: loadgen PORT SECONDS CLIENTS PATHS\n");
    return 2;
  }
  port = atoi(argv[1]);
  seconds = atof(argv[2]);
  clients = atoi(argv[3]);
  FILE *f = fopen(argv[4], "r");
  if (!f) {
    perror(argv[4]);
    return 2;
  }
  char line[4096];
  int capacity = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (n_paths == capacity) paths = realloc(paths, (capacity = 2 * capacity + 64) * sizeof *paths);
    paths[n_paths++] = strdup(line);
  }
  fclose(f);
  if (n_paths == 0 || clients < 1) {
    fprintf(stderr, "loadgen: no paths in %s or no clients\n", argv[4]);
    return 2;
  }
  Client *all = calloc(clients, sizeof *all);
  pthread_t *threads = calloc(clients, sizeof *threads);
  double began = now();
  stop_at = began + seconds;
  for (int k = 0; k < clients; k++) {
    all[k].offset = k;
    pthread_create(&threads[k], NULL, run, &all[k]);
  }
  long done = 0, errors = 0;
  for (int k = 0; k < clients; k++) {
    pthread_join(threads[k], NULL);
    done += all[k].done;
    errors += all[k].errors;
  }
  printf("%ld %ld %.6f\n", done, errors, now() - began);
  for (int k = 0; k < clients; k++)
    for (long i = 0; i < all[k].done; i++) printf("%u\n", all[k].latency_us[i]);
  return 0;
}
