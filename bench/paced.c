/* The paced client of bench/vs_postfix.py: a new SMTP connection per mail, started at a
 * fixed rate, one command at a time (as Django's smtplib or Postfix's smtp-source: no
 * pipelining), in C so that no event loop of the client's own adds its delays to the
 * relay's figures (its CPU per mail is still about 0.55 ms here: the kernel's work for a
 * new connection). Prints a line per mail, in milliseconds: its accept latency (connect to
 * the 250 after DATA), then where it went, step by step: connect to the banner, and the
 * replies to EHLO, MAIL, RCPT, DATA and the message (each from the command sent).
 *
 *     cc -O2 -o paced bench/paced.c && ./paced PORT RATE SECONDS SIZE
 *
 * Every mail is different (its Subject and Message-ID carry the run and its index): podpost
 * derives a mail's id from its content, and identical mails would be one mail to it.
 *
 * Bounded: at most RATE * SECONDS mails, each given up after 10 s; the whole run ends at
 * SECONDS + 15 s.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { BANNER, EHLO, MAIL, RCPT, DATA, BODY, QUIT, DONE };

struct conn {
    int fd, state, index;
    double began, at;
    double steps[BODY + 1]; /* per reply: since the previous one */
    char in[8192];
    size_t used;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *body, *outgoing;
static size_t body_len;
static long run_id;
static int failures, offsets;
static double started;

#define HEAD_MAX 256

static void build_body(int size) {
    body = malloc((size_t)size + 200);
    outgoing = malloc((size_t)size + 200 + HEAD_MAX);
    size_t n = 0;
    while (n < (size_t)size) {
        memset(body + n, 'x', 76);
        n += 76;
        body[n++] = '\r';
        body[n++] = '\n';
    }
    n += (size_t)sprintf(body + n, ".\r\n");
    body_len = n;
}

/* This mail's headers, then the shared body, in one buffer (one send). */
static size_t message(int index) {
    int head = snprintf(outgoing, HEAD_MAX,
                        "From: bench@example.com\r\nTo: sink@example.com\r\n"
                        "Subject: paced %ld %d\r\nMessage-ID: <%d.%ld@paced.bench>\r\n\r\n",
                        run_id, index, index, run_id);
    memcpy(outgoing + head, body, body_len);
    return (size_t)head + body_len;
}

static int send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t sent = send(fd, data, len, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EINTR) continue; /* loopback: brief */
            return -1;
        }
        data += sent;
        len -= (size_t)sent;
    }
    return 0;
}

/* The code of the next whole reply in c->in (consumed), 0 when none is complete yet. */
static int take_reply(struct conn *c) {
    size_t start = 0;
    for (;;) {
        char *nl = memchr(c->in + start, '\n', c->used - start);
        if (nl == NULL) return 0;
        size_t end = (size_t)(nl - c->in) + 1;
        int last = end - start >= 4 && c->in[start + 3] != '-';
        if (last) {
            int code = atoi(c->in + start);
            memmove(c->in, c->in + end, c->used - end);
            c->used -= end;
            return code;
        }
        start = end;
    }
}

static void finish(struct conn *c, int epfd) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = DONE;
}

/* The dialogue, one entry per state: the reply it waits for, and the command that follows
 * it (after DATA's 354 the message, after the message's 250 QUIT). */
static const struct {
    int code;
    const char *command;
} dialogue[] = {
    [BANNER] = {220, "EHLO paced.bench\r\n"},
    [EHLO] = {250, "MAIL FROM:<bench@example.com>\r\n"},
    [MAIL] = {250, "RCPT TO:<sink@example.com>\r\n"},
    [RCPT] = {250, "DATA\r\n"},
    [DATA] = {354, NULL},
    [BODY] = {250, "QUIT\r\n"},
};

/* Advance one connection on a reply; returns -1 when it failed. */
static int step(struct conn *c, int code) {
    if (c->state > BODY || code != dialogue[c->state].code) return -1;
    double t = now();
    c->steps[c->state] = (t - c->at) * 1000.0;
    c->at = t;
    int state = c->state++;
    if (state == DATA) return send_all(c->fd, outgoing, message(c->index));
    if (state == BODY) {
        printf("%.3f", (t - c->began) * 1000.0);
        for (int k = BANNER; k <= BODY; k++) printf(" %.3f", c->steps[k]);
        if (offsets) printf(" %.3f", c->began - started); /* analysis: when it began */
        printf("\n");
    }
    const char *command = dialogue[state].command;
    return send_all(c->fd, command, strlen(command));
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: paced PORT RATE SECONDS SIZE\n");
        return 2;
    }
    int port = atoi(argv[1]);
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    int count = (int)(rate * seconds), size = atoi(argv[4]);
    if (port <= 0 || rate <= 0 || count <= 0 || size < 0) {
        fprintf(stderr, "paced: bad arguments\n");
        return 2;
    }
    build_body(size);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    run_id = (long)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    struct conn *conns = calloc((size_t)count, sizeof *conns);
    int epfd = epoll_create1(0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    offsets = getenv("PACED_OFFSETS") != NULL; /* analysis: the start, last per line */
    started = now();
    double start = started, deadline = start + seconds + 15.0;
    int next = 0, open = 0, oldest = 0;
    double next_check = start + 0.5;
    while ((next < count || open > 0) && now() < deadline) {
        double t = now();
        while (next < count && start + next / rate <= t) {
            struct conn *c = &conns[next];
            c->index = next++;
            c->began = c->at = now();
            c->fd = socket(AF_INET, SOCK_STREAM, 0);
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&to, sizeof to) < 0) {
                if (c->fd >= 0) close(c->fd);
                c->state = DONE;
                failures++;
                continue;
            }
            fcntl(c->fd, F_SETFL, O_NONBLOCK);
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
            c->state = BANNER;
            open++;
        }
        double wait_s = next < count ? start + next / rate - now() : 0.05;
        int timeout_ms = wait_s <= 0 ? 0 : (int)(wait_s * 1000.0);
        struct epoll_event events[256];
        int n = epoll_wait(epfd, events, 256, timeout_ms);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t got = recv(c->fd, c->in + c->used, sizeof c->in - c->used - 1, 0);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (c->state != QUIT) failures++;
                finish(c, epfd);
                open--;
                continue;
            }
            c->used += (size_t)got;
            int code;
            while (c->state != DONE && (code = take_reply(c)) != 0) {
                if (c->state == QUIT) {
                    finish(c, epfd);
                    open--;
                } else if (step(c, code) < 0) {
                    failures++;
                    finish(c, epfd);
                    open--;
                }
            }
        }
        if (now() >= next_check) { /* give up on a mail after 10 s */
            next_check = now() + 0.5;
            for (; oldest < next && conns[oldest].state == DONE; oldest++) {}
            for (int i = oldest; i < next; i++) {
                struct conn *c = &conns[i];
                if (c->state != DONE && now() - c->began > 10.0) {
                    failures++;
                    finish(c, epfd);
                    open--;
                }
            }
        }
    }
    if (failures) fprintf(stderr, "paced: %d mails failed\n", failures);
    return 0;
}
