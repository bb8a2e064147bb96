/* answer.c: answers as text (answer.h). */
#include "cmd/answer.h"

#include <ctype.h>
#include <string.h>

void st_trim(char *s)
{
    size_t n = strlen(s), a = 0;
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    while (s[a] && isspace((unsigned char)s[a])) a++;
    memmove(s, s + a, n - a + 1);
}

st_err st_answer_text(const st_tokenizer *tok, const int32_t *ids, size_t n, char **text)
{
    size_t len = 0;
    ST_TRY(st_tokenizer_decode(tok, ids, n, text, &len));
    st_trim(*text);
    return ST_OK;
}
