/* fib prints the Fibonacci numbers that fit in 64 bits, computed in C. */
#include <inttypes.h>
#include <stdio.h>

int main(void) {
	uint64_t a = 0, b = 1;
	for (int i = 0; i <= 93; i++) {
		printf("fib(%d) = %" PRIu64 "\n", i, a);
		uint64_t t = a + b;
		a = b;
		b = t;
	}
	fprintf(stderr, "done: 94 Fibonacci numbers, computed in C\n");
	return 0;
}
